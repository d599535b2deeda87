;; A core WebAssembly module, not a component, for the `handler-core-module`
;; case: `switchyard check` rejects it as a handler and lists its exports.
;; Build core-module.wasm with wasm-tools 1.263:
;;   wasm-tools parse core-module.wat -o core-module.wasm
(module
  (memory (export "memory") 1)
  (func (export "_start")))
