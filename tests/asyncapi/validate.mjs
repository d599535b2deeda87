// Validates an AsyncAPI document with the official parser, @asyncapi/parser.
//
// Usage: node validate.mjs NODE_MODULES FILE
// Prints one line per diagnostic: severity (0 error, 1 warning,
// 2 information, 3 hint), code, message and path as JSON. Exits 1 when the
// parser found an error or returned no document, and 2 on bad usage.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const [nodeModules, file] = process.argv.slice(2);
if (!nodeModules || !file) {
    console.error('usage: node validate.mjs NODE_MODULES FILE');
    process.exit(2);
}
const require = createRequire(`${nodeModules}/`);
const { Parser } = require('@asyncapi/parser');

const { document, diagnostics } = await new Parser().parse(readFileSync(file, 'utf8'));
for (const diagnostic of diagnostics) {
    console.log(JSON.stringify({
        severity: diagnostic.severity,
        code: diagnostic.code,
        message: diagnostic.message,
        path: diagnostic.path,
    }));
}
const errors = diagnostics.filter((diagnostic) => diagnostic.severity === 0);
process.exit(document && errors.length === 0 ? 0 : 1);
