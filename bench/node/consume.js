// Consumer loop of the original Node.js services: JSON.parse, a switch on
// the event type, ack. Drains MESSAGES messages from an existing QUEUE at the
// given PREFETCH and prints one JSON line with the rate.
//
// Usage: node consume.js QUEUE MESSAGES PREFETCH
// RABBITMQ_URL sets the broker (default amqp://guest:guest@127.0.0.1:5672).
const amqp = require("amqplib");

const [queue, messagesArg, prefetchArg] = process.argv.slice(2);
const messages = Number(messagesArg);
const prefetch = Number(prefetchArg);
if (!queue || !(messages > 0) || !(prefetch >= 0)) {
  console.error("usage: node consume.js QUEUE MESSAGES PREFETCH");
  process.exit(2);
}

async function main() {
  const connection = await amqp.connect(process.env.RABBITMQ_URL || "amqp://guest:guest@127.0.0.1:5672");
  const channel = await connection.createChannel();
  await channel.prefetch(prefetch);
  let handled = 0;
  const started = process.hrtime.bigint();
  await new Promise((resolve) => {
    channel.consume(queue, (message) => {
      if (message === null) return;
      const event = JSON.parse(message.content.toString());
      switch (event.type) {
        case "order.placed":
          break;
        default:
          break;
      }
      channel.ack(message);
      if (++handled === messages) resolve();
    });
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ messages, seconds, per_second: messages / seconds }));
  await channel.close();
  await connection.close();
}

main().catch((error) => {
  console.error(`consume.js failed: ${error.stack || error}`);
  process.exit(1);
});
