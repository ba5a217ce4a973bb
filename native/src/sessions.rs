//! Session windows of one key column, counted: the state and the per-record logic of Sluice's
//! SessionWindowOperator for its common case (src/sluice/operators/window.py says when it is used and
//! keeps the general, Polars path; the semantics are those of docs/design/time.md).
//!
//! Per key, the open sessions are kept sorted by start; two of them are always more than `gap` apart
//! (a record at most `gap` from a session joins it, and a record that reaches two merges them). Records are
//! taken in arrival order, each with the watermark before it: a record behind that watermark first
//! closes every session that ended by then (an emission round), then is late when its own session would
//! have closed already (t + gap < W) or when it reaches the newest session emitted for its key.


use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

type FxMap<K> = crate::fx::FxMap<K, u32>;

/// Key values ↔ dense ids (an id indexes the per-key vectors).
enum Keys {
    // keys of up to 15 bytes (most) are looked up packed in a u128 with their length, the others as bytes
    Str { short: FxMap<u128>, ids: FxMap<Box<[u8]>>, vals: Vec<Box<[u8]>> },
    Int { ids: FxMap<i64>, vals: Vec<i64> },
}

impl Keys {
    fn len(&self) -> usize {
        match self {
            Keys::Str { vals, .. } => vals.len(),
            Keys::Int { vals, .. } => vals.len(),
        }
    }
}

#[derive(Clone, Copy)]
struct Sess {
    ws: i64,
    last: i64,
    n: i64,
}

/// Closed sessions (or, for a snapshot, open ones): one row each, with the watermark of the round that
/// closed them.
#[derive(Default)]
struct Rows {
    key: Vec<u32>,
    ws: Vec<i64>,
    last: Vec<i64>,
    n: Vec<i64>,
    round: Vec<i64>,
}

const NONE: i64 = i64::MIN;

#[pyclass(module = "sluice_native")]
pub struct SessionKernel {
    gap: i64,
    keys: Keys,
    open: Vec<Vec<Sess>>,
    emitted: Vec<i64>, // LAST of the newest emitted session per key, NONE if none
    min_end: i64,      // at most the smallest end (last + gap + 1) of an open session
    compact_at: usize, // forget keys with nothing left to hold once this many have been seen
}

fn vec_of<T: pyo3::buffer::Element + Copy>(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<T>> {
    let buf = PyBuffer::<T>::get(obj).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    buf.to_vec(py)
}

fn check_offsets(offsets: &[i64], data_len: usize, n: usize) -> PyResult<()> {
    let bad = offsets.len() != n + 1
        || offsets.first().is_some_and(|&o| o < 0)
        || offsets.windows(2).any(|w| w[0] > w[1] || w[1] as usize > data_len);
    if bad {
        return Err(PyValueError::new_err("key offsets do not fit the data"));
    }
    Ok(())
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain numbers, read as their bytes
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl SessionKernel {
    #[inline]
    fn end(&self, s: &Sess) -> i64 {
        s.last.saturating_add(self.gap).saturating_add(1)
    }

    fn new_id(&mut self) -> u32 {
        self.open.push(Vec::new());
        self.emitted.push(NONE);
        (self.open.len() - 1) as u32
    }

    #[inline]
    fn str_id(&mut self, k: &[u8]) -> u32 {
        let packed = (k.len() < 16).then(|| {
            let mut w = [0u8; 16];
            w[..k.len()].copy_from_slice(k);
            w[15] = k.len() as u8;
            u128::from_le_bytes(w)
        });
        if let Keys::Str { short, ids, .. } = &self.keys {
            let hit = match packed {
                Some(p) => short.get(&p),
                None => ids.get(k),
            };
            if let Some(&id) = hit {
                return id;
            }
        }
        let id = self.new_id();
        if let Keys::Str { short, ids, vals } = &mut self.keys {
            match packed {
                Some(p) => short.insert(p, id),
                None => ids.insert(k.into(), id),
            };
            vals.push(k.into());
        }
        id
    }

    fn int_id(&mut self, k: i64) -> u32 {
        if let Keys::Int { ids, .. } = &self.keys {
            if let Some(&id) = ids.get(&k) {
                return id;
            }
        }
        let id = self.new_id();
        if let Keys::Int { ids, vals } = &mut self.keys {
            ids.insert(k, id);
            vals.push(k);
        }
        id
    }

    /// Key ids of a batch: string keys as Arrow large-string offsets and data, integer keys as i64 values.
    fn ids(&mut self, py: Python<'_>, a: &Bound<'_, PyAny>, b: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        match (&self.keys, b) {
            (Keys::Str { .. }, Some(b)) => {
                let offsets: Vec<i64> = vec_of(py, a, "key offsets")?;
                let data: Vec<u8> = vec_of(py, b, "key data")?;
                check_offsets(&offsets, data.len(), n)?;
                for w in offsets.windows(2) {
                    out.push(self.str_id(&data[w[0] as usize..w[1] as usize]));
                }
            }
            (Keys::Int { .. }, None) => {
                let vals: Vec<i64> = vec_of(py, a, "keys")?;
                if vals.len() != n {
                    return Err(PyValueError::new_err("keys and times differ in length"));
                }
                for v in vals {
                    out.push(self.int_id(v));
                }
            }
            _ => return Err(PyValueError::new_err("keys of the wrong kind for this kernel")),
        }
        Ok(out)
    }

    /// Records in arrival order (key ids, times, watermarks before them) → (late positions, closed rows).
    fn run(&mut self, ids: impl Iterator<Item = u32>, times: &[i64], wms: &[i64]) -> (Vec<u32>, Rows) {
        let gap = self.gap;
        let mut late: Vec<u32> = Vec::new();
        let mut closed = Rows::default();
        for (i, k) in ids.enumerate() {
            let (t, wm) = (times[i], wms[i]);
            if t < wm {
                self.close_into(wm, &mut closed);
                let e = self.emitted[k as usize];
                if t.saturating_add(gap).saturating_add(1) <= wm || (e != NONE && t <= e.saturating_add(gap)) {
                    late.push(i as u32);
                    continue;
                }
            }
            self.insert(k, t);
        }
        (late, closed)
    }

    /// The record joins the sessions of its key it reaches (merging them), or starts one.
    #[inline]
    fn insert(&mut self, k: u32, t: i64) {
        let gap = self.gap;
        let sess = &mut self.open[k as usize];
        if let Some(s) = sess.last_mut() {
            if t >= s.ws {
                // at or after the newest session's start: earlier sessions end more than gap before it
                if t <= s.last.saturating_add(gap) {
                    s.last = s.last.max(t);
                    s.n += 1;
                } else {
                    sess.push(Sess { ws: t, last: t, n: 1 });
                    let end = t.saturating_add(gap).saturating_add(1);
                    self.min_end = self.min_end.min(end);
                }
                return;
            }
        }
        // first session of the key, or a record before the newest session's start
        let lo = sess.partition_point(|s| s.last.saturating_add(gap) < t);
        let hi = sess.partition_point(|s| s.ws.saturating_sub(gap) <= t);
        let merged = if lo >= hi {
            Sess { ws: t, last: t, n: 1 }
        } else {
            let n: i64 = sess[lo..hi].iter().map(|s| s.n).sum();
            Sess { ws: sess[lo].ws.min(t), last: sess[hi - 1].last.max(t), n: n + 1 }
        };
        sess.splice(lo..hi.max(lo), std::iter::once(merged));
        let end = merged.last.saturating_add(gap).saturating_add(1);
        self.min_end = self.min_end.min(end);
    }

    /// Close every session that ended by `wm` (end ≤ wm), into `out`, in the order the operator emits
    /// them: by end, key, start.
    fn close_into(&mut self, wm: i64, out: &mut Rows) {
        if wm < self.min_end {
            return;
        }
        let from = out.key.len();
        let gap = self.gap;
        let mut min_end = i64::MAX;
        for (k, sess) in self.open.iter_mut().enumerate() {
            if sess.is_empty() {
                continue;
            }
            // sessions are apart, so their ends rise with their starts: the closed ones come first
            let cut = sess.partition_point(|s| s.last.saturating_add(gap).saturating_add(1) <= wm);
            for s in sess.drain(..cut) {
                out.key.push(k as u32);
                out.ws.push(s.ws);
                out.last.push(s.last);
                out.n.push(s.n);
                out.round.push(wm);
                self.emitted[k] = self.emitted[k].max(s.last);
            }
            if let Some(s) = sess.first() {
                min_end = min_end.min(s.last.saturating_add(gap).saturating_add(1));
            }
        }
        self.min_end = min_end;
        self.sort_from(out, from);
    }

    fn sort_from(&self, rows: &mut Rows, from: usize) {
        let mut order: Vec<usize> = (from..rows.key.len()).collect();
        let keys = &self.keys;
        order.sort_unstable_by(|&i, &j| {
            let (ki, kj) = (rows.key[i] as usize, rows.key[j] as usize);
            rows.last[i].cmp(&rows.last[j]) // end = last + gap + 1
                .then_with(|| match keys {
                    // text sorts by its bytes (as Polars sorts it), integers by value
                    Keys::Str { vals, .. } => vals[ki].cmp(&vals[kj]),
                    Keys::Int { vals, .. } => vals[ki].cmp(&vals[kj]),
                })
                .then_with(|| rows.ws[i].cmp(&rows.ws[j]))
        });
        fn permute<T: Copy>(v: &mut [T], from: usize, order: &[usize]) {
            let picked: Vec<T> = order.iter().map(|&i| v[i]).collect();
            v[from..].copy_from_slice(&picked);
        }
        permute(&mut rows.key, from, &order);
        permute(&mut rows.ws, from, &order);
        permute(&mut rows.last, from, &order);
        permute(&mut rows.n, from, &order);
        permute(&mut rows.round, from, &order);
    }

    /// (rows, keys (string views or i64 values), key data or None, ws, last, n, round) as bytes.
    fn rows_out<'py>(&self, py: Python<'py>, rows: &Rows) -> PyResult<Bound<'py, PyTuple>> {
        let (a, b): (Bound<'py, PyAny>, Bound<'py, PyAny>) = match &self.keys {
            Keys::Str { vals, .. } => {
                // Arrow string views (Polars' own layout, taken without a copy): 16 bytes each, the length
                // and the text itself up to 12 bytes, else its first 4 bytes, buffer 0 and the offset
                let mut views = vec![0u8; rows.key.len() * 16];
                let mut data = Vec::new();
                for (i, &k) in rows.key.iter().enumerate() {
                    let text = &vals[k as usize];
                    let v = &mut views[i * 16..i * 16 + 16];
                    v[0..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
                    if text.len() <= 12 {
                        v[4..4 + text.len()].copy_from_slice(text);
                    } else {
                        v[4..8].copy_from_slice(&text[..4]);
                        v[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
                        data.extend_from_slice(text);
                    }
                }
                (PyBytes::new(py, &views).into_any(), PyBytes::new(py, &data).into_any())
            }
            Keys::Int { vals, .. } => {
                let v: Vec<i64> = rows.key.iter().map(|&k| vals[k as usize]).collect();
                (PyBytes::new(py, as_bytes(&v)).into_any(), py.None().into_bound(py))
            }
        };
        PyTuple::new(
            py,
            [
                rows.key.len().into_pyobject(py)?.into_any(),
                a,
                b,
                PyBytes::new(py, as_bytes(&rows.ws)).into_any(),
                PyBytes::new(py, as_bytes(&rows.last)).into_any(),
                PyBytes::new(py, as_bytes(&rows.n)).into_any(),
                PyBytes::new(py, as_bytes(&rows.round)).into_any(),
            ],
        )
    }
}

#[pymethods]
impl SessionKernel {
    #[new]
    #[pyo3(signature = (gap, string_keys, compact_at = 65536))]
    fn py_new(gap: i64, string_keys: bool, compact_at: usize) -> PyResult<Self> {
        if gap < 0 {
            return Err(PyValueError::new_err("gap must not be negative"));
        }
        let keys = if string_keys {
            Keys::Str { short: FxMap::default(), ids: FxMap::default(), vals: Vec::new() }
        } else {
            Keys::Int { ids: FxMap::default(), vals: Vec::new() }
        };
        Ok(SessionKernel { gap, keys, open: Vec::new(), emitted: Vec::new(), min_end: i64::MAX, compact_at: compact_at.max(1) })
    }

    /// Take a batch in arrival order: keys (see `ids`), event times and the watermark before each record
    /// (i64 arrays). Returns (indices of the late records as u32 bytes, sessions closed by records behind
    /// the watermark as in `close`).
    #[pyo3(signature = (keys, key_data, times, wms))]
    fn ingest<'py>(
        &mut self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        key_data: Option<&Bound<'py, PyAny>>,
        times: &Bound<'py, PyAny>,
        wms: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)> {
        let times: Vec<i64> = vec_of(py, times, "times")?;
        let wms: Vec<i64> = vec_of(py, wms, "watermarks")?;
        if wms.len() != times.len() {
            return Err(PyValueError::new_err("times and watermarks differ in length"));
        }
        let (late, closed) = match (&self.keys, key_data) {
            (Keys::Str { .. }, Some(b)) => {
                let offsets: Vec<i64> = vec_of(py, keys, "key offsets")?;
                let data: Vec<u8> = vec_of(py, b, "key data")?;
                check_offsets(&offsets, data.len(), times.len())?;
                py.detach(|| {
                    let ids: Vec<u32> = offsets.windows(2).map(|w| self.str_id(&data[w[0] as usize..w[1] as usize])).collect();
                    self.run(ids.into_iter(), &times, &wms)
                })
            }
            (Keys::Int { .. }, None) => {
                let vals: Vec<i64> = vec_of(py, keys, "keys")?;
                if vals.len() != times.len() {
                    return Err(PyValueError::new_err("keys and times differ in length"));
                }
                py.detach(|| {
                    let ids: Vec<u32> = vals.iter().map(|&v| self.int_id(v)).collect();
                    self.run(ids.into_iter(), &times, &wms)
                })
            }
            _ => return Err(PyValueError::new_err("keys of the wrong kind for this kernel")),
        };
        Ok((PyBytes::new(py, as_bytes(&late)), self.rows_out(py, &closed)?))
    }

    /// Close every session that ended by `wm`: (rows, keys, key data, ws, last, n, round) as in `rows_out`.
    fn close<'py>(&mut self, py: Python<'py>, wm: i64) -> PyResult<Bound<'py, PyTuple>> {
        let mut rows = Rows::default();
        self.close_into(wm, &mut rows);
        self.rows_out(py, &rows)
    }

    /// The end of the last open session (last + gap + 1), None when none is open.
    fn held_end(&self) -> Option<i64> {
        self.open.iter().filter_map(|s| s.last()).map(|s| self.end(s)).max()
    }

    fn open_sessions(&self) -> usize {
        self.open.iter().map(|s| s.len()).sum()
    }

    /// The open sessions (round: 0), for a snapshot.
    fn export_open<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut rows = Rows::default();
        for (k, sess) in self.open.iter().enumerate() {
            for s in sess {
                rows.key.push(k as u32);
                rows.ws.push(s.ws);
                rows.last.push(s.last);
                rows.n.push(s.n);
                rows.round.push(0);
            }
        }
        self.rows_out(py, &rows)
    }

    /// The newest emitted session's last record per key, for those with last ≥ `since`: (rows, keys, key
    /// data, last).
    fn export_emitted<'py>(&self, py: Python<'py>, since: i64) -> PyResult<Bound<'py, PyTuple>> {
        let mut rows = Rows::default();
        for (k, &e) in self.emitted.iter().enumerate() {
            if e != NONE && e >= since {
                rows.key.push(k as u32);
                rows.last.push(e);
            }
        }
        self.rows_out(py, &rows)
    }

    /// Load open sessions (keys as in `ingest`, ws, last, n) into an empty kernel; sessions of one key
    /// must be apart by more than gap (as a snapshot holds them).
    #[pyo3(signature = (keys, key_data, ws, last, n))]
    fn load_open(
        &mut self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        key_data: Option<&Bound<'_, PyAny>>,
        ws: &Bound<'_, PyAny>,
        last: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ws: Vec<i64> = vec_of(py, ws, "ws")?;
        let last: Vec<i64> = vec_of(py, last, "last")?;
        let n: Vec<i64> = vec_of(py, n, "n")?;
        if last.len() != ws.len() || n.len() != ws.len() {
            return Err(PyValueError::new_err("session columns differ in length"));
        }
        let ids = self.ids(py, keys, key_data, ws.len())?;
        for (i, &k) in ids.iter().enumerate() {
            self.open[k as usize].push(Sess { ws: ws[i], last: last[i], n: n[i] });
        }
        let gap = self.gap;
        let mut min_end = self.min_end;
        for sess in self.open.iter_mut() {
            sess.sort_by_key(|s| s.ws);
            if sess.windows(2).any(|w| w[1].ws <= w[0].last.saturating_add(gap)) {
                return Err(PyValueError::new_err("two open sessions of one key overlap"));
            }
            if let Some(s) = sess.first() {
                min_end = min_end.min(s.last.saturating_add(gap).saturating_add(1));
            }
        }
        self.min_end = min_end;
        Ok(())
    }

    #[pyo3(signature = (keys, key_data, last))]
    fn load_emitted(
        &mut self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        key_data: Option<&Bound<'_, PyAny>>,
        last: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let last: Vec<i64> = vec_of(py, last, "last")?;
        let ids = self.ids(py, keys, key_data, last.len())?;
        for (i, &k) in ids.iter().enumerate() {
            self.emitted[k as usize] = self.emitted[k as usize].max(last[i]);
        }
        Ok(())
    }

    fn keys_seen(&self) -> usize {
        self.keys.len()
    }

    /// Forget the keys with no open session whose newest emitted session ended before `since` (no record
    /// can reach it any more), once as many keys have been seen as `compact_at`; then wait for twice as many
    /// as are left. A key forgotten and seen again starts afresh, as it would have.
    fn compact(&mut self, since: i64) {
        if self.keys.len() < self.compact_at {
            return;
        }
        let keep: Vec<bool> = (0..self.open.len()).map(|k| !self.open[k].is_empty() || self.emitted[k] >= since).collect();
        let open = std::mem::take(&mut self.open);
        let emitted = std::mem::take(&mut self.emitted);
        let remap = |vals_len: usize| -> Vec<Option<u32>> {
            let mut next = 0u32;
            (0..vals_len).map(|k| keep[k].then(|| { next += 1; next - 1 })).collect()
        };
        let ids = remap(open.len());
        for (k, (sess, e)) in open.into_iter().zip(emitted).enumerate() {
            if keep[k] {
                self.open.push(sess);
                self.emitted.push(e);
            }
        }
        match &mut self.keys {
            Keys::Str { short, ids: long, vals } => {
                short.retain(|_, id| ids[*id as usize].map(|n| *id = n).is_some());
                long.retain(|_, id| ids[*id as usize].map(|n| *id = n).is_some());
                let old = std::mem::take(vals);
                vals.extend(old.into_iter().enumerate().filter(|(k, _)| keep[*k]).map(|(_, v)| v));
            }
            Keys::Int { ids: map, vals } => {
                map.retain(|_, id| ids[*id as usize].map(|n| *id = n).is_some());
                let old = std::mem::take(vals);
                vals.extend(old.into_iter().enumerate().filter(|(k, _)| keep[*k]).map(|(_, v)| v));
            }
        }
        self.compact_at = self.compact_at.max(2 * self.open.len());
    }
}
