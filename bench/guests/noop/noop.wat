;; No-op benchmark guest: returns ok for every event without reading it, so
;; the benchmarks measure the runtime around the handler.
;;
;; Build the component (bench/guests/noop.wasm) with wasm-tools 1.263:
;;   wasm-tools component embed noop.wit noop.wat --world noop -o /tmp/noop-core.wasm
;;   wasm-tools component new /tmp/noop-core.wasm -o ../noop.wasm
(module
  (memory (export "memory") 1)

  ;; Bytes 0..16 hold the result of `handle`; the heap that cabi_realloc
  ;; hands out starts at 1024.
  (global $heap (mut i32) (i32.const 1024))

  (func (export "handle") (param $event i32) (result i32)
    ;; ok: discriminant 0
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.const 0))

  ;; Runs after the host has read the result: the event's strings and lists
  ;; are no longer needed, so the heap starts over for the next call on
  ;; this instance.
  (func (export "cabi_post_handle") (param i32)
    (global.set $heap (i32.const 1024)))

  ;; A bump allocator for the event's strings and lists, emptied after each
  ;; call by cabi_post_handle.
  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $address i32)
    (local $end i32)
    (local.set $address
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $address) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.lt_s
              (memory.grow
                (i32.shr_u
                  (i32.add
                    (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                    (i32.const 65535))
                  (i32.const 16)))
              (i32.const 0))
          (then unreachable))))
    (memory.copy (local.get $address) (local.get $old) (local.get $old_size))
    (global.set $heap (local.get $end))
    (local.get $address))
)
