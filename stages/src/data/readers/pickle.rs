//! A small, strict reader for the subset of Python's pickle format that the CIFAR "python
//! version" files use.
//!
//! The official files were written by Python 2's `cPickle` (protocol 2): a dict whose keys are
//! byte strings and whose values are lists of ints (`labels`, `fine_labels`, …), lists of byte
//! strings (`filenames`) and a NumPy `uint8` array (`data`). NumPy pickles an array as
//! `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` followed by `BUILD` with the state
//! `(version, shape, dtype, is_fortran, raw_bytes)`; the dtype is itself
//! `numpy.dtype('u1', False, True)` plus a `BUILD`. Python 3 writes protocol-2 `bytes` as
//! `_codecs.encode(text, 'latin1')`, so that form is accepted too (re-pickled copies of the
//! files use it).
//!
//! Anything else — another global, an opcode outside this subset, a dtype other than one-byte
//! unsigned — is an error: the reader never executes or guesses.
//!
//! Hostile files are bounded: values nest at most [`MAX_DEPTH`] deep (a 4 MB file of nested
//! lists would otherwise overflow the stack when freed), and what memo reads copy is charged
//! against a budget proportional to the file (a 318-byte file that reads its memo entries
//! back into themselves doubles with every step).

use std::collections::HashMap;
use std::rc::Rc;

/// A decoded pickle value (only the shapes CIFAR needs).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 3 `str` / Python 2 `unicode`.
    Str(String),
    /// Python 2 `str` / Python 3 `bytes`. Shared: the memo may hold the same large buffer.
    Bytes(Rc<Vec<u8>>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A `GLOBAL` reference, `(module, name)`; only ever a callable awaiting `REDUCE`.
    Global(String, String),
    /// A NumPy dtype; only one-byte unsigned integers are accepted when the array is built.
    Dtype(String),
    /// A NumPy array: `shape` and raw bytes (C order), filled in by `BUILD`.
    Array {
        shape: Vec<usize>,
        dtype: String,
        data: Rc<Vec<u8>>,
    },
}

impl Value {
    /// Bytes or text content, for matching dict keys written by either Python version.
    pub fn as_key(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// Looks a key up in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_key() == Some(key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(..) => "global",
            Value::Dtype(_) => "dtype",
            Value::Array { .. } => "array",
        }
    }
}

/// How deep values may nest (CIFAR files: 3, a dict of lists of strings).
pub const MAX_DEPTH: usize = 32;

/// Nodes (and string bytes) memo reads may copy beyond the file's own size.
const MEMO_COPY_ALLOWANCE: u64 = 1 << 20;

/// Whether `v` nests at most `limit` levels (a scalar is level 1); recursion stops at the
/// limit, so checking never goes deeper than the limit either.
fn within_depth(v: &Value, limit: usize) -> bool {
    if limit == 0 {
        return false;
    }
    match v {
        Value::List(items) | Value::Tuple(items) => {
            items.iter().all(|i| within_depth(i, limit - 1))
        }
        Value::Dict(pairs) => pairs
            .iter()
            .all(|(k, v)| within_depth(k, limit - 1) && within_depth(v, limit - 1)),
        _ => true,
    }
}

/// Refuses a value that would nest a container deeper than [`MAX_DEPTH`].
fn check_nesting(v: &Value) -> Result<(), String> {
    if within_depth(v, MAX_DEPTH - 1) {
        Ok(())
    } else {
        Err(format!(
            "pickle nests containers more than {MAX_DEPTH} deep (a CIFAR file nests 3)"
        ))
    }
}

/// Charges the copy a memo read makes of `v` (its nodes and string bytes) against `budget`;
/// stops counting as soon as the budget is spent.
fn charge_copy(v: &Value, budget: &mut u64) -> Result<(), String> {
    let cost = match v {
        Value::Str(s) | Value::Dtype(s) => 1 + s.len() as u64,
        Value::Global(m, n) => 1 + (m.len() + n.len()) as u64,
        _ => 1,
    };
    *budget = budget.checked_sub(cost).ok_or(
        "pickle memo reads copy more than the file could hold: a memo bomb, not a CIFAR file",
    )?;
    match v {
        Value::List(items) | Value::Tuple(items) => {
            items.iter().try_for_each(|i| charge_copy(i, budget))
        }
        Value::Dict(pairs) => pairs.iter().try_for_each(|(k, v)| {
            charge_copy(k, budget)?;
            charge_copy(v, budget)
        }),
        _ => Ok(()),
    }
}

/// Stack entries: values and `MARK`s.
#[derive(Debug)]
enum Slot {
    Mark,
    V(Value),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "pickle truncated: needed {n} bytes at offset {} of {}",
                self.pos,
                self.bytes.len()
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle truncated inside a text line")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "non-UTF-8 text line in pickle")?;
        self.pos += n + 1;
        Ok(s.to_string())
    }
}

fn pop(stack: &mut Vec<Slot>) -> Result<Value, String> {
    match stack.pop() {
        Some(Slot::V(v)) => Ok(v),
        Some(Slot::Mark) => Err("pickle stack: expected a value, found a MARK".into()),
        None => Err("pickle stack underflow".into()),
    }
}

fn pop_mark(stack: &mut Vec<Slot>) -> Result<Vec<Value>, String> {
    let at = stack
        .iter()
        .rposition(|s| matches!(s, Slot::Mark))
        .ok_or("pickle: no MARK on the stack")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items
        .into_iter()
        .map(|s| match s {
            Slot::V(v) => v,
            Slot::Mark => unreachable!("only the last MARK was searched for"),
        })
        .collect())
}

fn top(stack: &mut [Slot]) -> Result<&mut Value, String> {
    match stack.last_mut() {
        Some(Slot::V(v)) => Ok(v),
        _ => Err("pickle stack: expected a value on top".into()),
    }
}

/// `REDUCE`: applies one of the few callables the CIFAR files contain.
fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &func else {
        return Err(format!("REDUCE on a {}, expected a global", func.kind()));
    };
    let Value::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match (module.as_str(), name.as_str()) {
        ("_codecs", "encode") => match args.as_slice() {
            [Value::Str(text), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                let bytes: Result<Vec<u8>, String> = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).map_err(|_| "non-latin1 character".into()))
                    .collect();
                Ok(Value::Bytes(Rc::new(bytes?)))
            }
            _ => Err("_codecs.encode with unexpected arguments".into()),
        },
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Ok(Value::Array {
            shape: vec![0],
            dtype: String::new(),
            data: Rc::new(Vec::new()),
        }),
        ("numpy", "dtype") => match args.first() {
            Some(Value::Str(d)) => Ok(Value::Dtype(d.clone())),
            Some(Value::Bytes(d)) => Ok(Value::Dtype(String::from_utf8_lossy(d).into_owned())),
            _ => Err("numpy.dtype without a type string".into()),
        },
        _ => Err(format!(
            "pickle calls {module}.{name}, which a CIFAR file never does"
        )),
    }
}

/// `BUILD`: sets the state of an array or dtype.
fn build(obj: &mut Value, state: Value) -> Result<(), String> {
    match obj {
        // dtype state: (3, '|', None, None, None, -1, -1, 0); the byte order is irrelevant
        // for one-byte types, which are the only ones accepted.
        Value::Dtype(_) => Ok(()),
        Value::Array { shape, dtype, data } => {
            let Value::Tuple(s) = state else {
                return Err("array state is not a tuple".into());
            };
            let [_version, Value::Tuple(dims), Value::Dtype(dt), fortran, raw] = s.as_slice()
            else {
                return Err("array state is not (version, shape, dtype, fortran, data)".into());
            };
            if !matches!(dt.as_str(), "u1" | "|u1" | "uint8") {
                return Err(format!(
                    "array dtype {dt:?} is not supported (expected u1, unsigned bytes)"
                ));
            }
            if matches!(fortran, Value::Bool(true) | Value::Int(1)) {
                return Err("Fortran-ordered arrays are not supported".into());
            }
            let dims: Vec<usize> = dims
                .iter()
                .map(|d| match d {
                    Value::Int(n) if *n >= 0 => Ok(*n as usize),
                    _ => Err("array shape entry is not a non-negative int".to_string()),
                })
                .collect::<Result<_, _>>()?;
            let raw = match raw {
                Value::Bytes(b) => b.clone(),
                Value::Str(t) => Rc::new(
                    t.chars()
                        .map(|c| u8::try_from(u32::from(c)).map_err(|_| "non-latin1 data"))
                        .collect::<Result<Vec<u8>, _>>()?,
                ),
                other => return Err(format!("array data is a {}, expected bytes", other.kind())),
            };
            let want = dims.iter().product::<usize>();
            if raw.len() != want {
                return Err(format!(
                    "array of shape {dims:?} holds {} bytes, expected {want}",
                    raw.len()
                ));
            }
            *shape = dims;
            *dtype = dt.clone();
            *data = raw;
            Ok(())
        }
        other => Err(format!("BUILD on a {}", other.kind())),
    }
}

/// Parses one pickle. Errors are plain messages; callers add the file name.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { bytes, pos: 0 };
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut copy_budget = MEMO_COPY_ALLOWANCE + bytes.len() as u64;
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 2 {
                    return Err(format!("pickle protocol {proto} (this reader knows 0–2)"));
                }
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Slot::Mark),
            b'}' => stack.push(Slot::V(Value::Dict(Vec::new()))),
            b']' => stack.push(Slot::V(Value::List(Vec::new()))),
            b')' => stack.push(Slot::V(Value::Tuple(Vec::new()))),
            b'N' => stack.push(Slot::V(Value::None)),
            0x88 => stack.push(Slot::V(Value::Bool(true))),
            0x89 => stack.push(Slot::V(Value::Bool(false))),
            b'K' => stack.push(Slot::V(Value::Int(r.u8()? as i64))),
            b'M' => stack.push(Slot::V(Value::Int(r.u16()? as i64))),
            b'J' => stack.push(Slot::V(Value::Int(r.u32()? as i32 as i64))),
            b'G' => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Slot::V(Value::Float(f64::from_be_bytes(a))));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err("LONG1 integer wider than 64 bits".into());
                }
                let b = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Slot::V(Value::Int(v)));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Slot::V(Value::Bytes(Rc::new(r.take(n)?.to_vec()))));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Slot::V(Value::Bytes(Rc::new(r.take(n)?.to_vec()))));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s =
                    std::str::from_utf8(r.take(n)?).map_err(|_| "invalid UTF-8 in BINUNICODE")?;
                stack.push(Slot::V(Value::Str(s.to_string())));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Slot::V(Value::Global(module, name)));
            }
            b'q' | b'r' => {
                let i = if op == b'q' { r.u8()? as u32 } else { r.u32()? };
                let v = top(&mut stack)?;
                // A put copies too: the same value put again and again is the same bomb.
                charge_copy(v, &mut copy_budget)?;
                memo.insert(i, v.clone());
            }
            b'h' | b'j' => {
                let i = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let v = memo
                    .get(&i)
                    .ok_or_else(|| format!("pickle memo entry {i} read before it was written"))?;
                charge_copy(v, &mut copy_budget)?;
                stack.push(Slot::V(v.clone()));
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(check_nesting)?;
                stack.push(Slot::V(Value::Tuple(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(pop(&mut stack)?);
                }
                items.reverse();
                items.iter().try_for_each(check_nesting)?;
                stack.push(Slot::V(Value::Tuple(items)));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(check_nesting)?;
                stack.push(Slot::V(Value::List(items)));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                check_nesting(&v)?;
                match top(&mut stack)? {
                    Value::List(l) => l.push(v),
                    other => return Err(format!("APPEND to a {}", other.kind())),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(check_nesting)?;
                match top(&mut stack)? {
                    Value::List(l) => l.extend(items),
                    other => return Err(format!("APPENDS to a {}", other.kind())),
                }
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(check_nesting)?;
                if !items.len().is_multiple_of(2) {
                    return Err("DICT with an odd number of items".into());
                }
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                stack.push(Slot::V(Value::Dict(pairs)));
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                check_nesting(&k)?;
                check_nesting(&v)?;
                match top(&mut stack)? {
                    Value::Dict(d) => d.push((k, v)),
                    other => return Err(format!("SETITEM on a {}", other.kind())),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(check_nesting)?;
                if !items.len().is_multiple_of(2) {
                    return Err("SETITEMS with an odd number of items".into());
                }
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                match top(&mut stack)? {
                    Value::Dict(d) => d.extend(pairs),
                    other => return Err(format!("SETITEMS on a {}", other.kind())),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                stack.push(Slot::V(reduce(func, args)?));
            }
            b'b' => {
                let state = pop(&mut stack)?;
                build(top(&mut stack)?, state)?;
            }
            b'0' => {
                pop(&mut stack)?;
            }
            other => {
                return Err(format!(
                "pickle opcode 0x{other:02x} at offset {} is outside the subset CIFAR files use",
                r.pos - 1
            ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn parsed_quickly(bytes: &[u8]) -> Result<Value, String> {
        let t = Instant::now();
        let r = parse(bytes);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        r
    }

    #[test]
    fn a_memo_bomb_is_refused_before_it_grows() {
        // `l = []; repeat 60×: l = [l, l]` through the memo: 2^60 nodes when every read
        // copies, from a file of 422 bytes.
        let mut b = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            b.extend_from_slice(&[b'(', b'h', 0, b'h', 0, b'l', b'q', 0, b'0']);
        }
        b.extend_from_slice(&[b'h', 0, b'.']);
        assert!(b.len() < 600);
        let e = parsed_quickly(&b).unwrap_err();
        assert!(e.contains("memo bomb"), "{e}");
    }

    #[test]
    fn memo_reads_of_a_long_string_are_charged_by_its_length() {
        // A 64 KiB string read back 40 times: 2.5 MiB of copies from a 66 KiB file, flat.
        let mut b = vec![0x80, 2, b'(', b'X'];
        b.extend_from_slice(&(64u32 << 10).to_le_bytes());
        b.extend(std::iter::repeat_n(b'a', 64 << 10));
        b.extend_from_slice(&[b'q', 0]);
        for _ in 0..40 {
            b.extend_from_slice(&[b'h', 0]);
        }
        b.extend_from_slice(b"l.");
        let e = parsed_quickly(&b).unwrap_err();
        assert!(e.contains("memo bomb"), "{e}");
        // The same string read back a few times is an ordinary file.
        let mut ok = b[..b.len() - 2 - 80].to_vec();
        ok.extend_from_slice(&[b'h', 0, b'h', 0, b'l', b'.']);
        match parsed_quickly(&ok).unwrap() {
            Value::List(items) => assert_eq!(items.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // 2M nested lists (4 MB): freeing them recursively overflowed the stack.
        let n = 2_000_000;
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', n));
        b.extend(std::iter::repeat_n(b'a', n - 1));
        b.push(b'.');
        let e = parsed_quickly(&b).unwrap_err();
        assert!(e.contains("nests containers more than 32 deep"), "{e}");
        // Through MARK-built lists and tuples as well.
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', 100));
        b.extend(std::iter::repeat_n(b'l', 100));
        b.push(b'.');
        assert!(parsed_quickly(&b).unwrap_err().contains("deep"));
        // MAX_DEPTH itself is fine.
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', MAX_DEPTH));
        b.extend(std::iter::repeat_n(b'a', MAX_DEPTH - 1));
        b.push(b'.');
        assert!(within_depth(&parsed_quickly(&b).unwrap(), MAX_DEPTH));
    }
}
