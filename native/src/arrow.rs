//! Columns to and from Polars through the Arrow C data interface (PyCapsules), without pyarrow or numpy.
//!
//! Out: `Export` holds a struct array (one child per column) built from Rust vectors, moved to its consumer
//! without a copy by `__arrow_c_array__` (`pl.Series(export).struct.unnest()` gives the DataFrame).
//! In: `buffers(series)` reads a single-chunk Polars Series through `__arrow_c_stream__` and returns its
//! buffers as read-only bytes-like objects that keep the array alive while they are referenced.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::buffer::PyBuffer;
use pyo3::types::{PyCapsule, PyList, PyTuple};

use crate::{Column, Kind, Plan, Spec};
use pyo3::ffi;

#[repr(C)]
pub(crate) struct ArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

#[repr(C)]
pub(crate) struct ArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

#[repr(C)]
struct ArrowArrayStream {
    get_schema: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ArrowSchema) -> c_int>,
    get_next: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ArrowArray) -> c_int>,
    get_last_error: Option<unsafe extern "C" fn(*mut ArrowArrayStream) -> *const c_char>,
    release: Option<unsafe extern "C" fn(*mut ArrowArrayStream)>,
    private_data: *mut c_void,
}

// SAFETY: the structs own what they point to (or borrow nothing), and the C data interface lets them be
// moved and released from any thread.
unsafe impl Send for ArrowSchema {}
unsafe impl Send for ArrowArray {}
unsafe impl Sync for ArrowSchema {}
unsafe impl Sync for ArrowArray {}

impl ArrowSchema {
    fn empty() -> Self {
        ArrowSchema {
            format: std::ptr::null(),
            name: std::ptr::null(),
            metadata: std::ptr::null(),
            flags: 0,
            n_children: 0,
            children: std::ptr::null_mut(),
            dictionary: std::ptr::null_mut(),
            release: None,
            private_data: std::ptr::null_mut(),
        }
    }
}

impl ArrowArray {
    fn empty() -> Self {
        ArrowArray {
            length: 0,
            null_count: 0,
            offset: 0,
            n_buffers: 0,
            n_children: 0,
            buffers: std::ptr::null_mut(),
            children: std::ptr::null_mut(),
            dictionary: std::ptr::null_mut(),
            release: None,
            private_data: std::ptr::null_mut(),
        }
    }
}

/// A buffer kept alive by the array that points into it.
pub(crate) trait Held: Send {
    fn ptr(&self) -> *const c_void;
}

impl<T: Send> Held for Vec<T> {
    fn ptr(&self) -> *const c_void {
        self.as_ptr() as *const c_void
    }
}

/// One array to export: its Arrow format string, length, null count, buffers (validity first; None for
/// absent) and children.
pub(crate) struct Node {
    pub format: &'static str,
    pub name: String,
    pub len: usize,
    pub nulls: usize,
    pub bufs: Vec<Option<Box<dyn Held>>>,
    pub children: Vec<Node>,
}

pub(crate) fn held<T: Send + 'static>(v: Option<Vec<T>>) -> Option<Box<dyn Held>> {
    v.map(|v| Box::new(v) as Box<dyn Held>)
}

struct SchemaPrivate {
    format: CString,
    name: CString,
    children: Vec<*mut ArrowSchema>,
}

unsafe extern "C" fn release_schema(s: *mut ArrowSchema) {
    // SAFETY: called by the consumer once, on a schema made by `export_schema` (or moved from one)
    unsafe {
        let s = &mut *s;
        if s.release.is_none() {
            return;
        }
        let p = Box::from_raw(s.private_data as *mut SchemaPrivate);
        for &c in &p.children {
            if let Some(r) = (*c).release {
                r(c);
            }
            drop(Box::from_raw(c));
        }
        s.release = None;
    }
}

fn export_schema(node: &Node) -> ArrowSchema {
    let children: Vec<*mut ArrowSchema> = node.children.iter().map(|c| Box::into_raw(Box::new(export_schema(c)))).collect();
    let mut p = Box::new(SchemaPrivate {
        format: CString::new(node.format).expect("format"),
        name: CString::new(node.name.clone()).unwrap_or_default(),
        children,
    });
    ArrowSchema {
        format: p.format.as_ptr(),
        name: p.name.as_ptr(),
        metadata: std::ptr::null(),
        flags: 2, // nullable
        n_children: p.children.len() as i64,
        children: p.children.as_mut_ptr(),
        dictionary: std::ptr::null_mut(),
        release: Some(release_schema),
        private_data: Box::into_raw(p) as *mut c_void,
    }
}

struct ArrayPrivate {
    _bufs: Vec<Option<Box<dyn Held>>>,
    ptrs: Vec<*const c_void>,
    children: Vec<*mut ArrowArray>,
}

unsafe extern "C" fn release_array(a: *mut ArrowArray) {
    // SAFETY: called by the consumer once, on an array made by `export_array` (or moved from one)
    unsafe {
        let a = &mut *a;
        if a.release.is_none() {
            return;
        }
        let p = Box::from_raw(a.private_data as *mut ArrayPrivate);
        for &c in &p.children {
            if let Some(r) = (*c).release {
                r(c);
            }
            drop(Box::from_raw(c));
        }
        a.release = None;
    }
}

fn export_array(node: Node) -> ArrowArray {
    let Node { len, nulls, bufs, children, .. } = node;
    let children: Vec<*mut ArrowArray> = children.into_iter().map(|c| Box::into_raw(Box::new(export_array(c)))).collect();
    let ptrs: Vec<*const c_void> = bufs.iter().map(|b| b.as_ref().map_or(std::ptr::null(), |b| b.ptr())).collect();
    let mut p = Box::new(ArrayPrivate { _bufs: bufs, ptrs, children });
    ArrowArray {
        length: len as i64,
        null_count: nulls as i64,
        offset: 0,
        n_buffers: p.ptrs.len() as i64,
        n_children: p.children.len() as i64,
        buffers: p.ptrs.as_mut_ptr(),
        children: p.children.as_mut_ptr(),
        dictionary: std::ptr::null_mut(),
        release: Some(release_array),
        private_data: Box::into_raw(p) as *mut c_void,
    }
}

/// Columns for Polars: a struct array of them, handed over once through `__arrow_c_array__`.
#[pyclass(module = "sluice_native")]
pub(crate) struct Export {
    taken: Option<(ArrowSchema, ArrowArray)>,
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Some((mut s, mut a)) = self.taken.take() {
            // SAFETY: never handed over: ours to release
            unsafe {
                if let Some(r) = s.release {
                    r(&mut s);
                }
                if let Some(r) = a.release {
                    r(&mut a);
                }
            }
        }
    }
}

impl Export {
    /// A struct array of `columns`, each `len` rows long.
    pub(crate) fn new(columns: Vec<Node>, len: usize) -> Export {
        let top = Node { format: "+s", name: String::new(), len, nulls: 0, bufs: vec![None], children: columns };
        let schema = export_schema(&top);
        Export { taken: Some((schema, export_array(top))) }
    }
}

#[pymethods]
impl Export {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(&mut self, py: Python<'py>, requested_schema: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema; // the columns are offered as they are
        let Some((s, a)) = self.taken.take() else {
            return Err(PyValueError::new_err("these columns were already handed over"));
        };
        let sc = PyCapsule::new_with_destructor(py, s, Some(CString::new("arrow_schema").unwrap()), |mut s, _| {
            // SAFETY: not moved out by a consumer (release still set): ours to release
            if let Some(r) = s.release {
                unsafe { r(&mut s) }
            }
        })?;
        let ac = PyCapsule::new_with_destructor(py, a, Some(CString::new("arrow_array").unwrap()), |mut a, _| {
            if let Some(r) = a.release {
                // SAFETY: as above
                unsafe { r(&mut a) }
            }
        })?;
        PyTuple::new(py, [sc.into_any(), ac.into_any()])
    }
}

fn fixed_width(format: &str) -> Option<usize> {
    Some(match format {
        "c" | "C" => 1,
        "s" | "S" => 2,
        "i" | "I" | "f" => 4,
        "l" | "L" | "g" => 8,
        _ => return None,
    })
}

/// Columns from Python buffers (copied): `columns` is a list of (name, Arrow format, length, [validity or
/// None, buffers...]) with formats "l", "L", "g", "i", "I" or "vu" (views, one data buffer).
#[pyfunction]
pub(crate) fn frame(columns: &Bound<'_, PyList>, len: usize) -> PyResult<Export> {
    let mut nodes = Vec::with_capacity(columns.len());
    for c in columns.iter() {
        let (name, format, n, bufs): (String, String, usize, Vec<Option<PyBuffer<u8>>>) = c.extract()?;
        if n != len || bufs.is_empty() {
            return Err(PyValueError::new_err(format!("frame: column {name} has {n} rows, not {len}, or no buffers")));
        }
        let py = c.py();
        let copy = |b: &Option<PyBuffer<u8>>| -> PyResult<Option<Vec<u64>>> {
            let Some(b) = b else { return Ok(None) };
            let bytes: Vec<u8> = b.to_vec(py)?;
            let mut out = vec![0u64; bytes.len().div_ceil(8)];
            // SAFETY: `out` holds at least bytes.len() bytes
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, bytes.len()) };
            Ok(Some(out))
        };
        let valid = copy(&bufs[0])?;
        let nulls = match &valid {
            None => 0,
            Some(v) => {
                let bits: &[u8] = crate::as_bytes(v);
                (0..n).filter(|&i| bits[i / 8] >> (i % 8) & 1 == 0).count()
            }
        };
        let node = if format == "vu" {
            let [_, views, data] = &bufs[..] else {
                return Err(PyValueError::new_err("frame: a string view column takes validity, views and data"));
            };
            let data_len = data.as_ref().map_or(0, |d| d.len_bytes());
            let views = copy(views)?.unwrap_or_default();
            if views.len() * 8 < n * 16 {
                return Err(PyValueError::new_err(format!("frame: column {name}: too few string views")));
            }
            let sizes: Vec<i64> = vec![data_len as i64];
            Node { format: "vu", name, len: n, nulls, children: vec![],
                   bufs: vec![held(valid), held(Some(views)), held(Some(copy(data)?.unwrap_or_default())), held(Some(sizes))] }
        } else {
            let Some(width) = fixed_width(&format) else {
                return Err(PyValueError::new_err(format!("frame: unsupported Arrow format {format}")));
            };
            let [_, values] = &bufs[..] else {
                return Err(PyValueError::new_err("frame: a fixed-width column takes validity and values"));
            };
            let values = copy(values)?.unwrap_or_default();
            if values.len() * 8 < n * width {
                return Err(PyValueError::new_err(format!("frame: column {name}: too few values")));
            }
            let format: &'static str = match format.as_str() {
                "c" => "c", "C" => "C", "s" => "s", "S" => "S", "i" => "i", "I" => "I", "f" => "f",
                "l" => "l", "L" => "L", _ => "g",
            };
            Node { format, name, len: n, nulls, children: vec![], bufs: vec![held(valid), held(Some(values))] }
        };
        nodes.push(node);
    }
    Ok(Export::new(nodes, len))
}

/// An array imported from a stream, released when the last buffer over it goes.
struct Imported {
    schema: ArrowSchema,
    array: ArrowArray,
}

// SAFETY: the imported structs own their memory; nothing here is tied to a thread
unsafe impl Sync for Imported {}

impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: moved out of the stream, ours to release
        unsafe {
            if let Some(r) = self.array.release {
                r(&mut self.array);
            }
            if let Some(r) = self.schema.release {
                r(&mut self.schema);
            }
        }
    }
}

/// Read-only bytes of an imported array's buffer (the buffer protocol), keeping the array alive.
#[pyclass(module = "sluice_native", frozen)]
pub(crate) struct Buffer {
    _owner: Arc<Imported>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the memory is immutable and owned (through `_owner`) for as long as the buffer lives
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

#[pymethods]
impl Buffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let b = slf.get();
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err("read-only buffer"));
        }
        // a zero-length buffer still needs a non-null address
        let ptr = if b.ptr.is_null() { std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut c_void } else { b.ptr as *mut c_void };
        // SAFETY: `view` is the caller's; `ptr` is valid for `len` bytes while `slf` (kept in view->obj) lives
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, b.len as ffi::Py_ssize_t, 1, flags) };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.len
    }
}

/// The buffers of a single-chunk Polars Series (`__arrow_c_stream__`), sliced to its rows: for fixed-width
/// types [values]; for a string view array [views, data buffers...]. The series must have no nulls (its
/// validity is not returned); its bytes are not copied.
#[pyfunction]
pub(crate) fn buffers<'py>(py: Python<'py>, series: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let cap = series.call_method1("__arrow_c_stream__", (py.None(),))?;
    let cap = cap.cast::<PyCapsule>().map_err(|_| PyTypeError::new_err("buffers: not an Arrow stream"))?;
    let p = cap.pointer_checked(Some(c"arrow_array_stream"))?.as_ptr() as *mut ArrowArrayStream;
    // SAFETY: a valid stream struct (the capsule's); moved out here (its release cleared in the capsule)
    let mut stream = unsafe {
        let s = std::ptr::read(p);
        (*p).release = None;
        s
    };
    let mut schema = ArrowSchema::empty();
    let mut arrays: Vec<ArrowArray> = Vec::new();
    // SAFETY: the stream's callbacks, called as the C stream interface says
    let ok = unsafe {
        let mut ok = (stream.get_schema.expect("get_schema"))(&mut stream, &mut schema) == 0;
        while ok {
            let mut a = ArrowArray::empty();
            ok = (stream.get_next.expect("get_next"))(&mut stream, &mut a) == 0;
            if !ok || a.release.is_none() {
                break;
            }
            arrays.push(a);
        }
        if let Some(r) = stream.release {
            r(&mut stream);
        }
        ok
    };
    if !ok || arrays.len() != 1 {
        // released by Imported's drop
        let _schema = Imported { schema, array: ArrowArray::empty() };
        let _arrays: Vec<Imported> = arrays.into_iter().map(|array| Imported { schema: ArrowSchema::empty(), array }).collect();
        return Err(PyValueError::new_err(if ok { "buffers: the series must be one chunk (rechunk it)" }
                                         else { "buffers: the Arrow stream failed" }));
    }
    let array = arrays.pop().expect("one array");
    let im = Arc::new(Imported { schema, array });
    // SAFETY: the schema's format is a C string; the array's buffers are as its format says
    let format = unsafe { std::ffi::CStr::from_ptr(im.schema.format) }.to_bytes().to_vec();
    let (len, off) = (im.array.length as usize, im.array.offset as usize);
    if im.array.null_count != 0 {
        return Err(PyValueError::new_err("buffers: the series has nulls"));
    }
    let buf = |i: usize| -> *const u8 { unsafe { *im.array.buffers.add(i) as *const u8 } };
    let make = |ptr: *const u8, bytes: usize| Buffer { _owner: im.clone(), ptr, len: bytes };
    let out = PyList::empty(py);
    if format == b"vu" || format == b"vz" {
        let n_data = im.array.n_buffers as usize - 3;
        // SAFETY: views are 16 bytes per row from the offset; the last buffer holds each data buffer's size
        let sizes: &[i64] = unsafe { std::slice::from_raw_parts(buf(n_data + 2) as *const i64, n_data) };
        let views = if len == 0 { std::ptr::null() } else { unsafe { buf(1).add(off * 16) } };
        out.append(Bound::new(py, make(views, len * 16))?)?;
        for (i, &size) in sizes.iter().enumerate() {
            out.append(Bound::new(py, make(buf(2 + i), size as usize))?)?;
        }
    } else if let Some(width) = fixed_width(std::str::from_utf8(&format).unwrap_or("")) {
        let values = if len == 0 { std::ptr::null() } else { unsafe { buf(1).add(off * width) } };
        out.append(Bound::new(py, make(values, len * width))?)?;
    } else {
        return Err(PyValueError::new_err(format!("buffers: unsupported Arrow format {}", String::from_utf8_lossy(&format))));
    }
    Ok(out)
}

fn decoded(spec: &Spec, n: usize, cols: &mut [Column]) -> Node {
    let c = std::mem::take(&mut cols[spec.col]);
    let valid = if c.nulls == 0 { None } else { Some(crate::pack_bits(&c.valid)) };
    let name = String::from_utf8_lossy(&spec.name).into_owned();
    let simple = |format: &'static str, values: Box<dyn Held>| Node {
        format, name: name.clone(), len: n, nulls: c.nulls, bufs: vec![held(valid.clone()), Some(values)], children: vec![],
    };
    match spec.kind {
        // the declared type is told by the range the parser checked
        Kind::Int if spec.min == i32::MIN as i64 && spec.max == i32::MAX as i64 => {
            simple("i", Box::new(c.ints.iter().map(|&v| v as i32).collect::<Vec<i32>>()))
        }
        Kind::Int if spec.min == 0 && spec.max == u32::MAX as i64 => {
            simple("I", Box::new(c.ints.iter().map(|&v| v as u32).collect::<Vec<u32>>()))
        }
        Kind::Int if spec.min == 0 => simple("L", Box::new(c.ints)), // u64 up to i64::MAX: the same bits
        Kind::Int => simple("l", Box::new(c.ints)),
        Kind::Float => simple("g", Box::new(c.floats)),
        Kind::Bool => {
            let bits: Vec<u8> = c.ints.iter().map(|&v| v as u8).collect();
            simple("b", Box::new(crate::pack_bits(&bits)))
        }
        Kind::Str => {
            let rows = c.offsets.len() - 1;
            let mut views = vec![0u128; rows];
            // SAFETY: `views` is rows * 16 bytes
            let out = unsafe { std::slice::from_raw_parts_mut(views.as_mut_ptr() as *mut u8, rows * 16) };
            crate::views(&c.offsets, &c.data, out);
            let sizes: Vec<i64> = vec![c.data.len() as i64];
            Node { format: "vu", name, len: n, nulls: c.nulls, children: vec![],
                   bufs: vec![held(valid), Some(Box::new(views)), Some(Box::new(c.data)), Some(Box::new(sizes))] }
        }
        Kind::Struct => {
            let children = spec.children.iter().map(|s| decoded(s, n, cols)).collect();
            Node { format: "+s", name, len: n, nulls: c.nulls, bufs: vec![held(valid)], children }
        }
    }
}

/// As `decode`, but the block's columns come as an `Export` (a struct array of them, taken by
/// `pl.Series(export).struct.unnest()`), their buffers moved, not copied; Int32 and UInt32 narrowed here.
#[pyfunction]
pub(crate) fn decode_arrow(py: Python<'_>, blob: PyBuffer<u8>, plan: &Bound<'_, Plan>) -> PyResult<Option<Export>> {
    let buf = crate::block_bytes(&blob)?;
    let plan: &Plan = plan.get();
    Ok(py.detach(|| {
        let (n, mut cols) = crate::decode_block(buf, plan)?;
        let nodes = plan.fields.iter().map(|s| decoded(s, n, &mut cols)).collect();
        Some(Export::new(nodes, n))
    }))
}
