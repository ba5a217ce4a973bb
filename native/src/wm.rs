//! Per-record watermarks of one batch from one source partition, in one pass (the Polars path in
//! `time/watermark.py` makes five Series calls for the same).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// For event times `times` (int64, no nulls) of a batch: the watermark before each record, little-endian
/// int64 bytes, and the new largest event time. The watermark before record i is
/// max(prev_max, t_0..t_{i-1}) − delay, at least `no_wm`, at most `floor` (the other partitions'), and never
/// below `current` (the watermark never goes back).
#[pyfunction]
pub(crate) fn watermarks<'py>(py: Python<'py>, times: PyBuffer<u8>, prev_max: i64, delay: i64, floor: i64,
                              current: i64, no_wm: i64) -> PyResult<(Bound<'py, PyBytes>, i64)> {
    if !times.is_c_contiguous() || times.len_bytes() % 8 != 0 {
        return Err(PyValueError::new_err("watermarks: the times must be a contiguous int64 buffer"));
    }
    let n = times.len_bytes() / 8;
    // SAFETY: a held, C-contiguous buffer of n * 8 bytes; read as its bytes and decoded 8 at a time
    let raw: &[u8] = unsafe {
        if n == 0 { &[] } else { std::slice::from_raw_parts(times.buf_ptr() as *const u8, n * 8) }
    };
    let mut run = prev_max;
    let out = PyBytes::new_with(py, n * 8, |buf| {
        for i in 0..n {
            let before = run.saturating_sub(delay).max(no_wm).min(floor).max(current);
            buf[i * 8..i * 8 + 8].copy_from_slice(&before.to_le_bytes());
            let t = i64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
            if t > run {
                run = t;
            }
        }
        Ok(())
    })?;
    Ok((out, run))
}

/// For windows ending at `ends` (int64), emitted by a batch whose per-record watermarks are `wms` (int64,
/// non-decreasing): each window's watermark, the last of `wms` below its end (the one before the record that
/// closed it), or `carry` when none is; little-endian int64 bytes.
#[pyfunction]
pub(crate) fn window_watermarks<'py>(py: Python<'py>, wms: PyBuffer<u8>, ends: PyBuffer<u8>, carry: i64)
                                     -> PyResult<Bound<'py, PyBytes>> {
    let read = |b: &PyBuffer<u8>, what: &str| -> PyResult<Vec<i64>> {
        if !b.is_c_contiguous() || b.len_bytes() % 8 != 0 {
            return Err(PyValueError::new_err(format!("window_watermarks: {what} must be a contiguous int64 buffer")));
        }
        let bytes = b.to_vec(py)?;
        Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
    };
    let (wms, ends) = (read(&wms, "the watermarks")?, read(&ends, "the window ends")?);
    PyBytes::new_with(py, ends.len() * 8, |buf| {
        for (i, &e) in ends.iter().enumerate() {
            let below = wms.partition_point(|&w| w < e); // how many watermarks lie below the end
            let wm = if below > 0 { wms[below - 1] } else { carry };
            buf[i * 8..i * 8 + 8].copy_from_slice(&wm.to_le_bytes());
        }
        Ok(())
    })
}

/// Whether the float64 `values` (a contiguous buffer of little-endian f64) hold a NaN: the pane kernel
/// skips NaN as it skips null, so a batch with a real NaN goes to the Polars path (which keeps it).
#[pyfunction]
pub(crate) fn any_nan(py: Python<'_>, values: PyBuffer<u8>) -> PyResult<bool> {
    if !values.is_c_contiguous() || values.len_bytes() % 8 != 0 {
        return Err(PyValueError::new_err("any_nan: the values must be a contiguous float64 buffer"));
    }
    let n = values.len_bytes() / 8;
    // SAFETY: a held, C-contiguous buffer of n * 8 bytes
    let raw: &[u8] = unsafe {
        if n == 0 { &[] } else { std::slice::from_raw_parts(values.buf_ptr() as *const u8, n * 8) }
    };
    Ok(py.detach(|| raw.chunks_exact(8).any(|c| f64::from_le_bytes(c.try_into().unwrap()).is_nan())))
}
