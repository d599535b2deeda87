;; A component of another world than the handler world, for the
;; `handler-other-world` case: it exports a `run` function and no `handle`,
;; so `switchyard check` rejects it and lists what it exports.
;; Build other-world.wasm with wasm-tools 1.263:
;;   wasm-tools parse other-world.wat -o other-world.wasm
(component
  (core module $module
    (func (export "run")))
  (core instance $instance (instantiate $module))
  (func (export "run")
    (canon lift (core func $instance "run"))))
