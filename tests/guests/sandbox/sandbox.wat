;; Sandbox test guest: on every event it writes what WASI gives it to stdout,
;; one line per item, and returns ok:
;;   env NAME=VALUE         for each environment variable
;;   preopen PATH flags N   for each preopened folder, N being the decimal
;;                          descriptor-flags (1 read, 2 write, 32 mutate-directory)
;; Tests use it to check that a consumer's grants, and nothing else, reach
;; the handler.
;;
;; Build the component (tests/guests/sandbox.wasm) with wasm-tools 1.263:
;;   wasm-tools component embed sandbox.wit sandbox.wat --world sandbox -o /tmp/sandbox-core.wasm
;;   wasm-tools component new /tmp/sandbox-core.wasm -o ../sandbox.wasm
(module
  (import "wasi:cli/stdout@0.2.0" "get-stdout" (func $get_stdout (result i32)))
  (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush"
    (func $blocking_write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.0" "[resource-drop]output-stream"
    (func $drop_output_stream (param i32)))
  (import "wasi:cli/environment@0.2.0" "get-environment"
    (func $get_environment (param i32)))
  (import "wasi:filesystem/preopens@0.2.0" "get-directories"
    (func $get_directories (param i32)))
  (import "wasi:filesystem/types@0.2.0" "[method]descriptor.get-flags"
    (func $get_flags (param i32 i32)))
  (import "wasi:filesystem/types@0.2.0" "[resource-drop]descriptor"
    (func $drop_descriptor (param i32)))

  (memory (export "memory") 1)

  ;; Layout of the first page:
  ;;   0     result of `handle` (16 bytes)
  ;;   32    result of blocking-write-and-flush (12 bytes, ignored)
  ;;   48    list returned by get-environment (pointer, length)
  ;;   56    list returned by get-directories (pointer, length)
  ;;   64    result of get-flags (discriminant, flags)
  ;;   128   fixed text
  ;;   1024  the line being written, at most 4096 bytes
  ;;   8192  start of the heap that cabi_realloc hands out
  (data (i32.const 128) "env ")
  (data (i32.const 132) "=")
  (data (i32.const 133) "\n")
  (data (i32.const 136) "preopen ")
  (data (i32.const 144) " flags ")
  (data (i32.const 151) "error")

  (global $heap (mut i32) (i32.const 8192))
  ;; End of the line being written.
  (global $line_end (mut i32) (i32.const 1024))

  ;; Appends bytes to the line, dropping what does not fit in 4096 bytes.
  (func $append (param $address i32) (param $length i32)
    (local $room i32)
    (local.set $room (i32.sub (i32.const 5120) (global.get $line_end)))
    (if (i32.gt_u (local.get $length) (local.get $room))
      (then (local.set $length (local.get $room))))
    (memory.copy (global.get $line_end) (local.get $address) (local.get $length))
    (global.set $line_end (i32.add (global.get $line_end) (local.get $length))))

  ;; Appends a number below 1000 in decimal.
  (func $append_number (param $value i32)
    (if (i32.ge_u (local.get $value) (i32.const 100))
      (then (call $append_digit (i32.div_u (local.get $value) (i32.const 100)))))
    (if (i32.ge_u (local.get $value) (i32.const 10))
      (then (call $append_digit
        (i32.rem_u (i32.div_u (local.get $value) (i32.const 10)) (i32.const 10)))))
    (call $append_digit (i32.rem_u (local.get $value) (i32.const 10))))

  (func $append_digit (param $digit i32)
    (if (i32.lt_u (global.get $line_end) (i32.const 5120))
      (then
        (i32.store8 (global.get $line_end) (i32.add (local.get $digit) (i32.const 48)))
        (global.set $line_end (i32.add (global.get $line_end) (i32.const 1))))))

  ;; Ends the line, writes it to `stream` and starts a new one.
  (func $write_line (param $stream i32)
    (call $append (i32.const 133) (i32.const 1))
    (call $blocking_write_and_flush
      (local.get $stream)
      (i32.const 1024)
      (i32.sub (global.get $line_end) (i32.const 1024))
      (i32.const 32))
    (global.set $line_end (i32.const 1024)))

  (func (export "handle") (param $event i32) (result i32)
    (local $stdout i32)
    (local $entry i32)
    (local $end i32)
    (local.set $stdout (call $get_stdout))

    ;; Each environment entry is two strings: 16 bytes.
    (call $get_environment (i32.const 48))
    (local.set $entry (i32.load (i32.const 48)))
    (local.set $end
      (i32.add (local.get $entry) (i32.mul (i32.load (i32.const 52)) (i32.const 16))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $entry) (local.get $end)))
        (call $append (i32.const 128) (i32.const 4))
        (call $append (i32.load (local.get $entry)) (i32.load offset=4 (local.get $entry)))
        (call $append (i32.const 132) (i32.const 1))
        (call $append (i32.load offset=8 (local.get $entry)) (i32.load offset=12 (local.get $entry)))
        (call $write_line (local.get $stdout))
        (local.set $entry (i32.add (local.get $entry) (i32.const 16)))
        (br $next)))

    ;; Each preopen is a descriptor handle and a string: 12 bytes.
    (call $get_directories (i32.const 56))
    (local.set $entry (i32.load (i32.const 56)))
    (local.set $end
      (i32.add (local.get $entry) (i32.mul (i32.load (i32.const 60)) (i32.const 12))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $entry) (local.get $end)))
        (call $append (i32.const 136) (i32.const 8))
        (call $append (i32.load offset=4 (local.get $entry)) (i32.load offset=8 (local.get $entry)))
        (call $append (i32.const 144) (i32.const 7))
        (call $get_flags (i32.load (local.get $entry)) (i32.const 64))
        (if (i32.eqz (i32.load8_u (i32.const 64)))
          (then (call $append_number (i32.load8_u (i32.const 65))))
          (else (call $append (i32.const 151) (i32.const 5))))
        (call $write_line (local.get $stdout))
        (call $drop_descriptor (i32.load (local.get $entry)))
        (local.set $entry (i32.add (local.get $entry) (i32.const 12)))
        (br $next)))

    (call $drop_output_stream (local.get $stdout))
    ;; ok: discriminant 0
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.const 0))

  (func (export "cabi_post_handle") (param i32))

  ;; A bump allocator that never frees: every call runs in a fresh instance.
  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $address i32)
    (local $needed_pages i32)
    (local.set $address
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $address) (local.get $size)))
    (local.set $needed_pages
      (i32.sub
        (i32.shr_u (i32.add (global.get $heap) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $needed_pages) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $needed_pages)) (i32.const -1))
          (then unreachable))))
    (memory.copy (local.get $address) (local.get $old) (local.get $old_size))
    (local.get $address))
)
