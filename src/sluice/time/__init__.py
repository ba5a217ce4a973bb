"""Event time, pure: watermarks, window shapes, aggregates. No I/O, no runtime."""
