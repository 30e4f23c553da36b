//! Just enough of sentencepiece's `ModelProto` protobuf (`sentencepiece_model.proto`) to read a
//! `spiece.model` — pieces with scores and types, the trainer's special ids, the normalizer's
//! precompiled charsmap — and to write the tiny one.

use std::path::Path;

use super::tok_err;
use crate::error::Result;

/// `SentencePiece.Type` values.
pub(super) const TYPE_NORMAL: u64 = 1;
/// The unknown piece.
pub(super) const TYPE_UNKNOWN: u64 = 2;
/// Control pieces (`<pad>`, `</s>`).
pub(super) const TYPE_CONTROL: u64 = 3;

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: u64,
}

/// The parts of a `ModelProto` the T5 tokenizer uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SpmModel {
    pub pieces: Vec<Piece>,
    /// `normalizer_spec.precompiled_charsmap`, empty for the identity normalizer.
    pub charsmap: Vec<u8>,
    /// `normalizer_spec.name` (`nmt_nfkc` for T5, `identity` for the tiny model).
    pub normalizer_name: String,
    pub unk_id: i64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    /// The next field as (number, value); length-delimited values come as bytes.
    fn field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?)),
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.bytes(n)?)
            }
            5 => Value::Fixed(u64::from(u32::from_le_bytes(
                self.bytes(4)?.try_into().ok()?,
            ))),
            _ => return None,
        };
        Some((key >> 3, value))
    }

    fn fields(buf: &'a [u8]) -> Option<Vec<(u64, Value<'a>)>> {
        let mut r = Reader { buf, pos: 0 };
        let mut out = vec![];
        while r.pos < buf.len() {
            out.push(r.field()?);
        }
        Some(out)
    }
}

enum Value<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn parse(buf: &[u8]) -> Option<SpmModel> {
    let mut model = SpmModel {
        unk_id: 0,
        ..SpmModel::default()
    };
    for (num, value) in Reader::fields(buf)? {
        match (num, value) {
            (1, Value::Bytes(b)) => {
                let mut piece = Piece {
                    piece: String::new(),
                    score: 0.0,
                    kind: TYPE_NORMAL,
                };
                for (n, v) in Reader::fields(b)? {
                    match (n, v) {
                        (1, Value::Bytes(s)) => piece.piece = String::from_utf8(s.to_vec()).ok()?,
                        (2, Value::Fixed(f)) => piece.score = f32::from_bits(f as u32),
                        (3, Value::Varint(t)) => piece.kind = t,
                        _ => {}
                    }
                }
                model.pieces.push(piece);
            }
            (2, Value::Bytes(b)) => {
                for (n, v) in Reader::fields(b)? {
                    if let (40, Value::Varint(id)) = (n, v) {
                        // int32 fields encode negatives as 64-bit two's complement.
                        model.unk_id = id as i64;
                    }
                }
            }
            (3, Value::Bytes(b)) => {
                for (n, v) in Reader::fields(b)? {
                    match (n, v) {
                        (1, Value::Bytes(s)) => {
                            model.normalizer_name = String::from_utf8_lossy(s).into_owned()
                        }
                        (2, Value::Bytes(s)) => model.charsmap = s.to_vec(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(model)
}

/// Reads a `spiece.model`.
pub(super) fn read(path: &Path) -> Result<SpmModel> {
    let buf = std::fs::read(path).map_err(|e| crate::EngineError::io(path, e))?;
    parse(&buf).ok_or_else(|| tok_err(path, "not a valid sentencepiece ModelProto"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, num: u64, bytes: &[u8]) {
    put_varint(out, num << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_int(out: &mut Vec<u8>, num: u64, v: i64) {
    put_varint(out, num << 3);
    put_varint(out, v as u64);
}

/// Serialises a Unigram `ModelProto` with T5's trainer spec (pad 0, eos 1, unk 2, no bos) and
/// an identity normalizer that, like T5's, adds the dummy prefix, collapses whitespace and
/// escapes spaces as `▁`.
pub(super) fn write_t5_unigram(pieces: &[Piece]) -> Vec<u8> {
    let mut out = vec![];
    for p in pieces {
        let mut msg = vec![];
        put_bytes(&mut msg, 1, p.piece.as_bytes());
        put_varint(&mut msg, 2 << 3 | 5);
        msg.extend_from_slice(&p.score.to_bits().to_le_bytes());
        put_int(&mut msg, 3, p.kind as i64);
        put_bytes(&mut out, 1, &msg);
    }
    let mut trainer = vec![];
    put_int(&mut trainer, 3, 1); // model_type UNIGRAM
    put_int(&mut trainer, 4, pieces.len() as i64);
    put_int(&mut trainer, 40, 2); // unk_id
    put_int(&mut trainer, 41, -1); // bos_id
    put_int(&mut trainer, 42, 1); // eos_id
    put_int(&mut trainer, 43, 0); // pad_id
    put_bytes(&mut out, 2, &trainer);
    let mut norm = vec![];
    put_bytes(&mut norm, 1, b"identity");
    put_int(&mut norm, 3, 1); // add_dummy_prefix
    put_int(&mut norm, 4, 1); // remove_extra_whitespaces
    put_int(&mut norm, 5, 1); // escape_whitespaces
    put_bytes(&mut out, 3, &norm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let pieces = vec![
            Piece {
                piece: "<pad>".into(),
                score: 0.0,
                kind: TYPE_CONTROL,
            },
            Piece {
                piece: "<unk>".into(),
                score: 0.0,
                kind: TYPE_UNKNOWN,
            },
            Piece {
                piece: "▁a".into(),
                score: -3.25,
                kind: TYPE_NORMAL,
            },
        ];
        let model = parse(&write_t5_unigram(&pieces)).expect("test setup");
        assert_eq!(model.pieces, pieces);
        assert_eq!(model.unk_id, 2);
        assert_eq!(model.normalizer_name, "identity");
        assert!(model.charsmap.is_empty());
        assert!(parse(&[0x0a, 0x05, 0x01]).is_none());
    }
}
