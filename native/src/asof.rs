//! The as-of join's matching (`operators/asof.py`): which buffered left rows are due, in what order, and the
//! right row each one pairs with. The Polars path does the same with about a dozen whole-frame calls a batch
//! (filter, sort of both buffers, renames, `join_asof`); this is one pass that returns row positions, and
//! the operator gathers its output columns with them.
//!
//! The rule (the Polars path's, `join_asof(strategy="backward")` on right rows sorted by time, order):
//! a due left row (time < `due`) pairs with the right row of its key that is latest by (time, order, seq)
//! among those with time < its time (≤ when not strict), if that one is at most `tolerance` before it.

use std::cmp::Ordering;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::arrow::{held, Export, Node};
use crate::fx::FxMap;

/// One column as `arrow::buffers` gives it: int64 values, or string views and their data buffers.
enum Col<'a> {
    Int(&'a [u8]),
    Str { views: &'a [u8], data: Vec<&'a [u8]> },
}

impl<'a> Col<'a> {
    #[inline]
    fn int(&self, i: usize) -> i64 {
        match self {
            Col::Int(v) => i64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap()),
            Col::Str { .. } => unreachable!("an int column"),
        }
    }

    #[inline]
    fn str(&self, i: usize) -> &'a [u8] {
        match self {
            Col::Str { views, data } => {
                let v = &views[i * 16..i * 16 + 16];
                let len = u32::from_le_bytes(v[0..4].try_into().unwrap()) as usize;
                if len <= 12 {
                    &v[4..4 + len]
                } else {
                    let b = u32::from_le_bytes(v[8..12].try_into().unwrap()) as usize;
                    let at = u32::from_le_bytes(v[12..16].try_into().unwrap()) as usize;
                    &data[b][at..at + len]
                }
            }
            Col::Int(_) => unreachable!("a string column"),
        }
    }

    /// Every row addresses bytes that exist (checked once, so `str` may index freely).
    fn check(&self, n: usize, what: &str) -> PyResult<()> {
        let ok = match self {
            Col::Int(v) => v.len() == n * 8,
            Col::Str { views, data } => {
                views.len() == n * 16
                    && (0..n).all(|i| {
                        let v = &views[i * 16..i * 16 + 16];
                        let len = u32::from_le_bytes(v[0..4].try_into().unwrap()) as usize;
                        if len <= 12 {
                            return true;
                        }
                        let b = u32::from_le_bytes(v[8..12].try_into().unwrap()) as usize;
                        let at = u32::from_le_bytes(v[12..16].try_into().unwrap()) as usize;
                        b < data.len() && at.checked_add(len).is_some_and(|end| end <= data[b].len())
                    })
            }
        };
        if ok {
            Ok(())
        } else {
            Err(PyValueError::new_err(format!("asof_match: {what} does not hold {n} rows")))
        }
    }

    #[inline]
    fn cmp(&self, a: usize, b: usize) -> Ordering {
        match self {
            Col::Int(_) => self.int(a).cmp(&self.int(b)),
            Col::Str { .. } => self.str(a).cmp(self.str(b)),
        }
    }
}

fn bytes_of(b: &PyBuffer<u8>) -> PyResult<&[u8]> {
    crate::block_bytes(b)
}

/// Held buffers of one column (kept alive while its slices are read).
struct Buffers {
    bufs: Vec<PyBuffer<u8>>,
    text: bool,
}

impl Buffers {
    fn new(list: &Bound<'_, PyList>, text: bool) -> PyResult<Buffers> {
        let bufs: Vec<PyBuffer<u8>> = list.iter().map(|b| PyBuffer::get(&b)).collect::<PyResult<_>>()?;
        if bufs.is_empty() {
            return Err(PyValueError::new_err("asof_match: a column without buffers"));
        }
        Ok(Buffers { bufs, text })
    }

    fn col(&self) -> PyResult<Col<'_>> {
        let first = bytes_of(&self.bufs[0])?;
        Ok(if self.text {
            Col::Str { views: first, data: self.bufs[1..].iter().map(bytes_of).collect::<PyResult<_>>()? }
        } else {
            Col::Int(first)
        })
    }
}

struct Sides<'a> {
    lkey: Col<'a>,
    ltime: Col<'a>,
    lseq: Col<'a>,
    rkey: Col<'a>,
    rtime: Col<'a>,
    rseq: Col<'a>,
    rorder: Option<Col<'a>>,
}

/// A string key, packed into one word when it is short (most are): hashed and compared without its bytes.
#[derive(PartialEq, Eq, Hash)]
enum Text<'a> {
    Short(u128),
    Long(&'a [u8]),
}

#[inline]
fn text(k: &[u8]) -> Text<'_> {
    if k.len() < 16 {
        let mut w = [0u8; 16];
        w[..k.len()].copy_from_slice(k);
        w[15] = k.len() as u8;
        Text::Short(u128::from_le_bytes(w))
    } else {
        Text::Long(k)
    }
}

/// (positions of the due left rows in (time, seq) order — only the matched ones when `inner` —, the right
/// row of each or None, positions of the left rows not yet due).
///
/// The right rows are grouped by key (a counting sort over key ids) and each group sorted by (time, order,
/// seq); a left row's match is then a binary search in its key's group.
fn run(s: &Sides<'_>, nl: usize, nr: usize, due: i64, tolerance: Option<i64>, strict: bool, inner: bool)
       -> (Vec<u32>, Vec<Option<u32>>, Vec<u32>) {
    let ltime: Vec<i64> = (0..nl).map(|i| s.ltime.int(i)).collect();
    let (mut ready, waiting): (Vec<u32>, Vec<u32>) = (0..nl as u32).partition(|&i| ltime[i as usize] < due);
    if ready.is_empty() {
        return (ready, Vec::new(), waiting);
    }
    ready.sort_unstable_by_key(|&i| (ltime[i as usize], s.lseq.int(i as usize)));
    let rtime: Vec<i64> = (0..nr).map(|j| s.rtime.int(j)).collect();
    let later = |a: &u32, b: &u32| -> Ordering {
        let (a, b) = (*a as usize, *b as usize);
        rtime[a].cmp(&rtime[b])
            .then_with(|| s.rorder.as_ref().map_or(Ordering::Equal, |o| o.cmp(a, b)))
            .then_with(|| s.rseq.int(a).cmp(&s.rseq.int(b)))
    };
    let mut group_of: Vec<u32> = Vec::with_capacity(nr);
    macro_rules! matches {
        ($rkey:expr, $lkey:expr) => {{
            let (rkey, lkey) = ($rkey, $lkey);
            let mut ids: FxMap<_, u32> = FxMap::default();
            for j in 0..nr {
                let next = ids.len() as u32;
                group_of.push(*ids.entry(rkey(j)).or_insert(next));
            }
            // a counting sort of the right rows by group, then each group in (time, order, seq) order
            let groups = ids.len();
            let mut starts = vec![0u32; groups + 1];
            for &g in &group_of {
                starts[g as usize + 1] += 1;
            }
            for g in 0..groups {
                starts[g + 1] += starts[g];
            }
            let mut fill = starts.clone();
            let mut rows = vec![0u32; nr];
            for (j, &g) in group_of.iter().enumerate() {
                rows[fill[g as usize] as usize] = j as u32;
                fill[g as usize] += 1;
            }
            for g in 0..groups {
                rows[starts[g] as usize..starts[g + 1] as usize].sort_unstable_by(later);
            }
            ready.iter().map(|&i| {
                let g = *ids.get(&lkey(i as usize))? as usize;
                let group = &rows[starts[g] as usize..starts[g + 1] as usize];
                let t = ltime[i as usize];
                let before = group.partition_point(|&j| if strict { rtime[j as usize] < t } else { rtime[j as usize] <= t });
                let j = *group.get(before.checked_sub(1)?)?;
                (tolerance.is_none_or(|tol| t - rtime[j as usize] <= tol)).then_some(j)
            }).collect::<Vec<Option<u32>>>()
        }};
    }
    let found = match s.rkey {
        Col::Int(_) => matches!(|j| s.rkey.int(j), |i| s.lkey.int(i)),
        Col::Str { .. } => matches!(|j| text(s.rkey.str(j)), |i| text(s.lkey.str(i))),
    };
    if inner {
        let (l, r): (Vec<u32>, Vec<Option<u32>>) = ready.iter().zip(found).filter(|(_, j)| j.is_some()).map(|(&i, j)| (i, j)).unzip();
        (l, r, waiting)
    } else {
        (ready, found, waiting)
    }
}

/// The matching of one release of the as-of join. Each column is the list `arrow::buffers` gives for a
/// single-chunk Series without nulls (keys: string or int64, `*_text` says which; times and seqs: int64;
/// `right_order`: None, string or int64). Left rows with time < `due` are released.
///
/// Returns (columns, waiting): a struct array of `left` (uint32 positions into the left rows, in (time,
/// seq) order) and `right` (uint32 positions into the right rows, null where none matched; when `inner`,
/// only matched left rows are listed), and the positions of the left rows not yet due (uint32 bytes).
#[pyfunction]
#[pyo3(signature = (left_key, left_time, left_seq, right_key, right_time, right_seq, key_text, right_order,
                    order_text, due, tolerance, strict, inner))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn asof_match<'py>(py: Python<'py>, left_key: &Bound<'_, PyList>, left_time: &Bound<'_, PyList>,
                         left_seq: &Bound<'_, PyList>, right_key: &Bound<'_, PyList>,
                         right_time: &Bound<'_, PyList>, right_seq: &Bound<'_, PyList>, key_text: bool,
                         right_order: Option<&Bound<'_, PyList>>, order_text: bool, due: i64,
                         tolerance: Option<i64>, strict: bool, inner: bool)
                         -> PyResult<(Export, Bound<'py, PyBytes>)> {
    let cols = [
        Buffers::new(left_key, key_text)?, Buffers::new(left_time, false)?, Buffers::new(left_seq, false)?,
        Buffers::new(right_key, key_text)?, Buffers::new(right_time, false)?, Buffers::new(right_seq, false)?,
    ];
    let order = right_order.map(|o| Buffers::new(o, order_text)).transpose()?;
    let nl = cols[1].bufs[0].len_bytes() / 8;
    let nr = cols[4].bufs[0].len_bytes() / 8;
    if nl > u32::MAX as usize || nr > u32::MAX as usize {
        return Err(PyValueError::new_err("asof_match: more than 2^32 buffered rows"));
    }
    let s = Sides {
        lkey: cols[0].col()?, ltime: cols[1].col()?, lseq: cols[2].col()?,
        rkey: cols[3].col()?, rtime: cols[4].col()?, rseq: cols[5].col()?,
        rorder: order.as_ref().map(|o| o.col()).transpose()?,
    };
    for (c, n, what) in [(&s.lkey, nl, "the left keys"), (&s.ltime, nl, "the left times"), (&s.lseq, nl, "the left seqs"),
                         (&s.rkey, nr, "the right keys"), (&s.rtime, nr, "the right times"), (&s.rseq, nr, "the right seqs")] {
        c.check(n, what)?;
    }
    if let Some(o) = &s.rorder {
        o.check(nr, "the right order")?;
    }
    let (left, right, waiting) = py.detach(|| run(&s, nl, nr, due, tolerance, strict, inner));
    let n = left.len();
    let nulls = right.iter().filter(|j| j.is_none()).count();
    let valid = (nulls > 0).then(|| crate::pack_bits(&right.iter().map(|j| j.is_some() as u8).collect::<Vec<u8>>()));
    let right: Vec<u32> = right.into_iter().map(|j| j.unwrap_or(0)).collect();
    let col = |name: &str, values: Vec<u32>, valid: Option<Vec<u8>>, nulls: usize| Node {
        format: "I", name: name.into(), len: n, nulls, bufs: vec![held(valid), held(Some(values))], children: vec![],
    };
    let waiting = PyBytes::new(py, crate::as_bytes(&waiting));
    Ok((Export::new(vec![col("left", left, None, 0), col("right", right, valid, nulls)], n), waiting))
}
