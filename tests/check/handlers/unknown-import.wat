;; A component that imports a function the host does not provide, for the
;; `handler-unknown-import` case: `switchyard check` rejects it and lists
;; its imports.
;; Build unknown-import.wasm with wasm-tools 1.263:
;;   wasm-tools parse unknown-import.wat -o unknown-import.wasm
(component
  (import "now" (func (result u64))))
