//! TensorBoard event files, read and written: what TRL, OpenRLHF and verl can log, and what
//! `report_to = ["tensorboard"]` writes beside a run's `metrics.jsonl`.
//!
//! An event file is a TFRecord stream: each record is a little-endian `u64` length, the
//! masked CRC32C of those 8 bytes, the payload, and the masked CRC32C of the payload. The
//! payload is an `Event` protobuf (`tensorflow/core/util/event.proto`): a wall time, a step and
//! a `Summary` of tagged values. PyTorch's `SummaryWriter.add_scalar` writes `simple_value`;
//! TF2 and `add_text` write a `tensor` (a scalar, or strings under the `text` plugin).
//!
//! The messages are declared with `prost`'s derive (only the fields read or written here;
//! others are skipped when decoding), so no `protoc` is needed to build.
//!
//! [`EventFileReader`] tails a file as it grows: it keeps the offset of the last whole record,
//! so a record the writer has only half flushed (a torn last record) is read on a later poll,
//! never reported as an error. A record whose checksum fails is corruption, reported with the
//! file and the byte offset.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TensorBoardError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: corrupt event file at byte {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

/// `tensorflow.Event`: the fields TensorBoard's scalar and text dashboards use.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The first record of a file: `brain.Event:2`.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`: which dashboard (plugin) a value is for.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorflow.TensorProto`, the parts a scalar or a text summary uses.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// f16 and bf16 values, each in the low 16 bits.
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
}

/// `tensorflow.DataType` values read here.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const DOUBLE: i32 = 2;
    pub const INT32: i32 = 3;
    pub const STRING: i32 = 7;
    pub const INT64: i32 = 9;
    pub const BFLOAT16: i32 = 14;
    pub const HALF: i32 = 19;
}

impl TensorProto {
    /// The first element as a number, from whichever field holds it.
    fn first_number(&self) -> Option<f64> {
        if let Some(v) = self.float_val.first() {
            return Some(*v as f64);
        }
        if let Some(v) = self.double_val.first() {
            return Some(*v);
        }
        if let Some(v) = self.int64_val.first() {
            return Some(*v as f64);
        }
        if let Some(v) = self.half_val.first() {
            let bits = *v as u16;
            return Some(match self.dtype {
                dtype::BFLOAT16 => half::bf16::from_bits(bits).to_f64(),
                _ => half::f16::from_bits(bits).to_f64(),
            });
        }
        if let Some(v) = self.int_val.first() {
            return Some(*v as f64);
        }
        let c = &self.tensor_content;
        let le = |n: usize| c.get(..n);
        match self.dtype {
            dtype::FLOAT => le(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            dtype::DOUBLE => le(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
            dtype::INT32 => le(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            dtype::INT64 => {
                le(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64)
            }
            dtype::HALF => le(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()),
            dtype::BFLOAT16 => le(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()),
            _ => None,
        }
    }
}

/// One value read from an event file.
#[derive(Clone, Debug, PartialEq)]
pub enum Logged {
    Scalar {
        step: i64,
        wall_time: f64,
        tag: String,
        value: f64,
    },
    /// A text summary (the `text` plugin): generations, tables of samples.
    Text {
        step: i64,
        wall_time: f64,
        tag: String,
        text: String,
    },
}

/// The values of one decoded `Event`: scalars and texts; other summaries (images,
/// histograms) are skipped.
pub fn values_of(event: &Event) -> Vec<Logged> {
    let Some(summary) = &event.summary else {
        return Vec::new();
    };
    let (step, wall_time) = (event.step, event.wall_time);
    summary
        .value
        .iter()
        .filter_map(|v| {
            let plugin = v
                .metadata
                .as_ref()
                .and_then(|m| m.plugin_data.as_ref())
                .map(|p| p.plugin_name.as_str());
            if let Some(x) = v.simple_value {
                return Some(Logged::Scalar {
                    step,
                    wall_time,
                    tag: v.tag.clone(),
                    value: x as f64,
                });
            }
            let t = v.tensor.as_ref()?;
            if plugin == Some("text") || t.dtype == dtype::STRING {
                let text = t
                    .string_val
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join("\n");
                return Some(Logged::Text {
                    step,
                    wall_time,
                    tag: v.tag.clone(),
                    text,
                });
            }
            if matches!(plugin, None | Some("scalars")) {
                return Some(Logged::Scalar {
                    step,
                    wall_time,
                    tag: v.tag.clone(),
                    value: t.first_number()?,
                });
            }
            None
        })
        .collect()
}

/// TFRecord's checksum: CRC32C, rotated and offset so that checksums of data containing
/// checksums stay well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Reads an event file from where it last stopped: call [`EventFileReader::poll`] again to
/// get what was appended since.
pub struct EventFileReader {
    path: PathBuf,
    /// Byte offset of the first record not read yet.
    offset: u64,
    /// Bytes read past `offset` that do not make a whole record yet.
    pending: Vec<u8>,
}

impl EventFileReader {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            pending: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset up to which the file has been read as whole records.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Every whole record appended since the last call, decoded. A record still being
    /// written is left for the next call; a checksum or protobuf failure is an error naming
    /// the offset (and the reader stays before the bad record).
    pub fn poll(&mut self) -> Result<Vec<Event>, TensorBoardError> {
        let path = self.path.clone();
        let io = |source| TensorBoardError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        let start = self.offset + self.pending.len() as u64;
        let len = file.metadata().map_err(io)?.len();
        if len < start {
            // Truncated and rewritten (verl's file logger opens with "wb"): start again.
            self.offset = 0;
            self.pending.clear();
        }
        file.seek(SeekFrom::Start(self.offset + self.pending.len() as u64))
            .map_err(io)?;
        file.read_to_end(&mut self.pending).map_err(io)?;
        let mut events = Vec::new();
        let mut at = 0usize;
        while let Some((payload, next)) = self.next_record(at)? {
            let event = Event::decode(payload).map_err(|e| self.corrupt(at, e.to_string()))?;
            events.push(event);
            at = next;
        }
        self.pending.drain(..at);
        self.offset += at as u64;
        Ok(events)
    }

    /// The record starting `at` bytes into `pending`, and where the next one starts; `None`
    /// when the bytes there do not make a whole record yet.
    fn next_record(&self, at: usize) -> Result<Option<(&[u8], usize)>, TensorBoardError> {
        let buf = &self.pending[at..];
        if buf.len() < 12 {
            return Ok(None);
        }
        let (len_bytes, len_crc) = (&buf[..8], &buf[8..12]);
        if masked_crc(len_bytes)
            != u32::from_le_bytes([len_crc[0], len_crc[1], len_crc[2], len_crc[3]])
        {
            return Err(self.corrupt(at, "the length's checksum does not match".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8]));
        let Ok(len) = usize::try_from(len) else {
            return Err(self.corrupt(at, format!("a record of {len} bytes")));
        };
        let Some(end) = len.checked_add(16).filter(|&e| e <= buf.len()) else {
            return Ok(None);
        };
        let payload = &buf[12..12 + len];
        let crc = &buf[12 + len..end];
        if masked_crc(payload) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(self.corrupt(at, "the record's checksum does not match".into()));
        }
        Ok(Some((payload, at + end)))
    }

    fn corrupt(&self, at: usize, what: String) -> TensorBoardError {
        TensorBoardError::Corrupt {
            path: self.path.clone(),
            offset: self.offset + at as u64,
            what,
        }
    }
}

/// Writes an event file TensorBoard (and `wandb sync`) reads: `events.out.tfevents.<time>.
/// <host>.<pid>.0` in `dir`, scalars as `simple_value` like PyTorch's `SummaryWriter`.
pub struct EventFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFileWriter {
    pub fn create(dir: &Path) -> Result<Self, TensorBoardError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.0",
            now.as_secs(),
            std::process::id()
        ));
        let file = File::create(&path).map_err(|source| TensorBoardError::Io {
            path: path.clone(),
            source,
        })?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        writer.write(&Event {
            wall_time: now.as_secs_f64(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event with these scalars at `step`.
    pub fn scalars<'a>(
        &mut self,
        step: usize,
        wall_time: f64,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<(), TensorBoardError> {
        let value = values
            .into_iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.to_string(),
                simple_value: Some(v as f32),
                tensor: None,
                metadata: None,
            })
            .collect();
        self.write(&Event {
            wall_time,
            step: step as i64,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// Writes one record (buffered; [`EventFileWriter::flush`] sends it to the file).
    pub fn write(&mut self, event: &Event) -> Result<(), TensorBoardError> {
        let payload = event.encode_to_vec();
        let len = (payload.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(payload.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&payload);
        record.extend_from_slice(&masked_crc(&payload).to_le_bytes());
        self.out
            .write_all(&record)
            .map_err(|source| TensorBoardError::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        self.out.flush().map_err(|source| TensorBoardError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Event files under `dir` (searched recursively, as TensorBoard does), sorted by name.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("tfevents"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC of TFRecord's reference implementation (`crc32c` of "" and of the
    /// 8 zero bytes of an empty record's length).
    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0, masked: 0xa282ead8.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        let c = crc32c::crc32c(b"123456789");
        assert_eq!(c, 0xe306_9283, "the CRC32C check value");
        assert_eq!(
            masked_crc(b"123456789"),
            c.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn written_scalars_read_back_and_a_torn_record_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventFileWriter::create(tmp.path()).unwrap();
        for step in 1..=3 {
            w.scalars(
                step,
                100.0 + step as f64,
                [("loss", 1.0 / step as f64), ("reward", 0.5)],
            )
            .unwrap();
        }
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        let mut r = EventFileReader::new(&path);
        let events = r.poll().unwrap();
        assert_eq!(events.len(), 4, "the version record and three steps");
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let values: Vec<Logged> = events.iter().flat_map(values_of).collect();
        assert_eq!(values.len(), 6);
        assert_eq!(
            values[2],
            Logged::Scalar {
                step: 2,
                wall_time: 102.0,
                tag: "loss".into(),
                value: 0.5
            }
        );
        // Half a record appended: nothing new yet, no error; the rest arrives, then it reads.
        let mut next = Vec::new();
        {
            let mut tail = EventFileWriter {
                path: path.clone(),
                out: BufWriter::new(File::create(tmp.path().join("scratch")).unwrap()),
            };
            tail.scalars(4, 104.0, [("loss", 0.25)]).unwrap();
            tail.flush().unwrap();
            next.extend(std::fs::read(tmp.path().join("scratch")).unwrap());
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&next[..next.len() / 2]).unwrap();
        f.flush().unwrap();
        assert!(r.poll().unwrap().is_empty());
        f.write_all(&next[next.len() / 2..]).unwrap();
        f.flush().unwrap();
        let events = r.poll().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].step, 4);
        assert_eq!(r.offset(), std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_flipped_byte_is_reported_with_its_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = EventFileWriter::create(tmp.path()).unwrap();
        w.scalars(1, 1.0, [("loss", 1.0)]).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        let first = bytes.len();
        w.scalars(2, 2.0, [("loss", 2.0)]).unwrap();
        w.flush().unwrap();
        bytes = std::fs::read(&path).unwrap();
        bytes[first + 14] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = EventFileReader::new(&path).poll().unwrap_err().to_string();
        assert!(
            err.contains(&format!("byte {first}")) && err.contains("checksum"),
            "{err}"
        );
    }

    #[test]
    fn tensor_scalars_and_text_are_read() {
        let event = Event {
            wall_time: 5.0,
            step: 7,
            file_version: None,
            summary: Some(Summary {
                value: vec![
                    SummaryValue {
                        tag: "train/reward".into(),
                        simple_value: None,
                        tensor: Some(TensorProto {
                            dtype: dtype::FLOAT,
                            tensor_content: 0.75f32.to_le_bytes().to_vec(),
                            ..Default::default()
                        }),
                        metadata: Some(SummaryMetadata {
                            plugin_data: Some(PluginData {
                                plugin_name: "scalars".into(),
                            }),
                        }),
                    },
                    SummaryValue {
                        tag: "train/generated_samples".into(),
                        simple_value: None,
                        tensor: Some(TensorProto {
                            dtype: dtype::STRING,
                            string_val: vec![b"12+35=47".to_vec()],
                            ..Default::default()
                        }),
                        metadata: Some(SummaryMetadata {
                            plugin_data: Some(PluginData {
                                plugin_name: "text".into(),
                            }),
                        }),
                    },
                ],
            }),
        };
        let decoded = Event::decode(event.encode_to_vec().as_slice()).unwrap();
        let values = values_of(&decoded);
        assert_eq!(
            values[0],
            Logged::Scalar {
                step: 7,
                wall_time: 5.0,
                tag: "train/reward".into(),
                value: 0.75
            }
        );
        assert_eq!(
            values[1],
            Logged::Text {
                step: 7,
                wall_time: 5.0,
                tag: "train/generated_samples".into(),
                text: "12+35=47".into()
            }
        );
    }
}
