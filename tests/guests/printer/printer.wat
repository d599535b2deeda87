;; Printer test guest: on every event it writes two lines to stdout, one line
;; to stderr, then 1 MiB of `y` with no newline to stdout, and returns ok.
;; Tests use it to check that guest output reaches the log and that large
;; output does not trap the guest.
;;
;; Build the component (tests/guests/printer.wasm) with wasm-tools 1.263:
;;   wasm-tools component embed printer.wit printer.wat --world printer -o /tmp/printer-core.wasm
;;   wasm-tools component new /tmp/printer-core.wasm -o ../printer.wasm
(module
  (import "wasi:cli/stdout@0.2.0" "get-stdout" (func $get_stdout (result i32)))
  (import "wasi:cli/stderr@0.2.0" "get-stderr" (func $get_stderr (result i32)))
  (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush"
    (func $blocking_write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.0" "[resource-drop]output-stream"
    (func $drop_output_stream (param i32)))

  (memory (export "memory") 1)

  ;; Layout of the first page:
  ;;   0     result of `handle` (16 bytes)
  ;;   32    result of blocking-write-and-flush (12 bytes, ignored)
  ;;   64    stdout text, 41 bytes
  ;;   128   stderr text, 19 bytes
  ;;   1024  4096 bytes of `y`, filled by `handle`
  ;;   8192  start of the heap that cabi_realloc hands out
  (data (i32.const 64) "printer: first line\nprinter: second line\n")
  (data (i32.const 128) "printer: to stderr\n")

  (global $heap (mut i32) (i32.const 8192))

  (func $write (param $stream i32) (param $address i32) (param $length i32)
    (call $blocking_write_and_flush
      (local.get $stream) (local.get $address) (local.get $length) (i32.const 32)))

  (func (export "handle") (param $event i32) (result i32)
    (local $stdout i32)
    (local $stderr i32)
    (local $chunks i32)
    (local.set $stdout (call $get_stdout))
    (local.set $stderr (call $get_stderr))
    (call $write (local.get $stdout) (i32.const 64) (i32.const 41))
    (call $write (local.get $stderr) (i32.const 128) (i32.const 19))

    ;; 256 writes of 4096 bytes, the most one blocking-write-and-flush takes.
    (memory.fill (i32.const 1024) (i32.const 0x79) (i32.const 4096))
    (local.set $chunks (i32.const 256))
    (loop $more
      (call $write (local.get $stdout) (i32.const 1024) (i32.const 4096))
      (local.set $chunks (i32.sub (local.get $chunks) (i32.const 1)))
      (br_if $more (local.get $chunks)))

    (call $drop_output_stream (local.get $stdout))
    (call $drop_output_stream (local.get $stderr))
    ;; ok: discriminant 0
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.const 0))

  (func (export "cabi_post_handle") (param i32))

  ;; A bump allocator: the host allocates the event's strings and lists here,
  ;; and every call runs in a fresh instance.
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
