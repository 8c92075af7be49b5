//! Writes pickles in exactly the form Python 2's `cPickle.dump(obj, f, 2)` gives the CIFAR
//! dicts (byte-string keys, int lists, a NumPy `uint8` array): the test-side twin of
//! `opt_stages::data::readers::pickle`'s reader, kept out of the library's API.
#![allow(dead_code)]
/// A value to write.
pub enum W<'a> {
    Bytes(&'a [u8]),
    Ints(&'a [i64]),
    BytesList(Vec<&'a [u8]>),
    /// `uint8` array with this shape and C-order data.
    U8Array(&'a [usize], &'a [u8]),
}

struct Out {
    buf: Vec<u8>,
    memo: u32,
}

impl Out {
    fn put(&mut self) {
        if self.memo < 256 {
            self.buf.extend([b'q', self.memo as u8]);
        } else {
            self.buf.push(b'r');
            self.buf.extend(self.memo.to_le_bytes());
        }
        self.memo += 1;
    }
    fn bytes(&mut self, b: &[u8]) {
        if b.len() < 256 {
            self.buf.extend([b'U', b.len() as u8]);
        } else {
            self.buf.push(b'T');
            self.buf.extend((b.len() as u32).to_le_bytes());
        }
        self.buf.extend_from_slice(b);
        self.put();
    }
    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.buf.extend([b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend((v as u16).to_le_bytes());
        } else {
            self.buf.push(b'J');
            self.buf.extend((v as i32).to_le_bytes());
        }
    }
}

/// A dict pickle, as `cPickle` protocol 2 writes it (cPickle batches items by 1000).
pub fn dict(items: &[(&str, W<'_>)]) -> Vec<u8> {
    let mut o = Out {
        buf: vec![0x80, 2, b'}'],
        memo: 0,
    };
    o.put();
    o.buf.push(b'(');
    for (k, v) in items {
        o.bytes(k.as_bytes());
        match v {
            W::Bytes(b) => o.bytes(b),
            W::Ints(xs) => {
                o.buf.push(b']');
                o.put();
                for chunk in xs.chunks(1000) {
                    o.buf.push(b'(');
                    for &x in chunk {
                        o.int(x);
                    }
                    o.buf.push(b'e');
                }
            }
            W::BytesList(xs) => {
                o.buf.push(b']');
                o.put();
                for chunk in xs.chunks(1000) {
                    o.buf.push(b'(');
                    for x in chunk {
                        o.bytes(x);
                    }
                    o.buf.push(b'e');
                }
            }
            W::U8Array(shape, data) => {
                o.buf
                    .extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\n");
                o.put();
                o.buf.extend_from_slice(b"cnumpy\nndarray\n");
                o.put();
                o.int(0);
                o.buf.push(0x85);
                o.put();
                o.bytes(b"b");
                o.buf.push(0x87);
                o.put();
                o.buf.push(b'R');
                o.put();
                // State: (1, shape, dtype, False, data).
                o.buf.push(b'(');
                o.int(1);
                o.buf.push(b'(');
                for &d in shape.iter() {
                    o.int(d as i64);
                }
                o.buf.push(b't');
                o.put();
                o.buf.extend_from_slice(b"cnumpy\ndtype\n");
                o.put();
                o.bytes(b"u1");
                o.int(0);
                o.int(1);
                o.buf.push(0x87);
                o.put();
                o.buf.push(b'R');
                o.put();
                o.buf.push(b'(');
                o.int(3);
                o.bytes(b"|");
                o.buf.extend([b'N', b'N', b'N']);
                o.buf.push(b'J');
                o.buf.extend((-1i32).to_le_bytes());
                o.buf.push(b'J');
                o.buf.extend((-1i32).to_le_bytes());
                o.int(0);
                o.buf.push(b't');
                o.put();
                o.buf.push(b'b');
                o.buf.push(0x89);
                o.bytes(data);
                o.buf.push(b't');
                o.put();
                o.buf.push(b'b');
            }
        }
    }
    o.buf.push(b'u');
    o.buf.push(b'.');
    o.buf
}
