//! Field tables read the way RabbitMQ reads them, to refuse what two readers could read
//! differently.
//!
//! amq-protocol decodes a field table into a map, so when a key appears twice the proxy sees
//! the last value; RabbitMQ looks keys up in the list as sent and uses the first. A
//! `queue.declare` with `x-dead-letter-exchange` twice was therefore authorized for one
//! exchange and dead-lettered to another. The map cannot show what it lost, so the raw
//! bytes of every table the proxy authorizes from (the arguments of declares, binds and
//! consumes, and the headers of a published message, which carry `CC` and `BCC`) are walked
//! here and a table holding a key twice, at any depth, is refused. Value widths follow
//! RabbitMQ's table grammar, as amq-protocol's do (`s` is a 16-bit integer, `l` and `L` are
//! 64-bit); a type neither knows is refused too.

use std::collections::HashSet;

/// Why a frame's field tables are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("duplicate key {0:?} in a field table")]
    Duplicate(String),
    #[error("a field table could not be read")]
    Malformed,
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TableError> {
        if self.bytes.len() < n {
            return Err(TableError::Malformed);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TableError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TableError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<usize, TableError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn short_string(&mut self) -> Result<&'a [u8], TableError> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    /// A whole field table (its 4-byte length, then its entries), checked.
    fn table(&mut self) -> Result<(), TableError> {
        let n = self.u32()?;
        let mut entries = Cursor {
            bytes: self.take(n)?,
        };
        let mut keys: HashSet<&[u8]> = HashSet::new();
        while !entries.bytes.is_empty() {
            let key = entries.short_string()?;
            if !keys.insert(key) {
                return Err(TableError::Duplicate(
                    String::from_utf8_lossy(key).chars().take(64).collect(),
                ));
            }
            entries.value()?;
        }
        Ok(())
    }

    fn value(&mut self) -> Result<(), TableError> {
        let width = match self.u8()? {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' | b'U' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => self.u32()?,
            b'F' => return self.table(),
            b'A' => {
                let n = self.u32()?;
                let mut items = Cursor {
                    bytes: self.take(n)?,
                };
                while !items.bytes.is_empty() {
                    items.value()?;
                }
                return Ok(());
            }
            _ => return Err(TableError::Malformed),
        };
        self.take(width).map(drop)
    }
}

/// Checks the field tables of one frame as it came from the application (`raw`: the whole
/// frame, header and end octet included). Frames without tables the proxy reads pass.
pub fn check_frame(raw: &[u8]) -> Result<(), TableError> {
    const METHOD: u8 = 1;
    const HEADER: u8 = 2;
    if raw.len() < 8 {
        return Ok(());
    }
    let mut c = Cursor {
        bytes: &raw[7..raw.len() - 1],
    };
    match raw[0] {
        METHOD => {
            let ids = (c.u16()?, c.u16()?);
            // How many short strings come between the reserved short and the table, and
            // whether a bits octet does.
            let (strings, bits) = match ids {
                (50, 10) => (1, true),            // queue.declare: queue
                (40, 10) => (2, true),            // exchange.declare: exchange, type
                (50, 20) => (3, true),            // queue.bind: queue, exchange, routing key
                (50, 50) => (3, false),           // queue.unbind
                (40, 30) | (40, 40) => (3, true), // exchange.(un)bind: destination, source, key
                (60, 20) => (2, true),            // basic.consume: queue, consumer tag
                _ => return Ok(()),
            };
            c.u16()?;
            for _ in 0..strings {
                c.short_string()?;
            }
            if bits {
                c.u8()?;
            }
            c.table()
        }
        HEADER => {
            // class, weight, body size, then the property flags (chained while bit 0 is
            // set); content-type and content-encoding may precede the headers table.
            c.take(12)?;
            let flags = c.u16()?;
            let mut more = flags & 1 == 1;
            while more {
                more = c.u16()? & 1 == 1;
            }
            if flags & (1 << 13) == 0 {
                return Ok(());
            }
            for bit in [15, 14] {
                if flags & (1 << bit) != 0 {
                    c.short_string()?;
                }
            }
            c.table()
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(s: &str) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn long(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    /// A table from raw entries, as sent (duplicates and order kept).
    fn table(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in entries {
            body.extend(short(k));
            body.extend(v);
        }
        long(&body)
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = vec![b'S'];
        v.extend(long(s.as_bytes()));
        v
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 1];
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xCE);
        f
    }

    fn queue_declare(args: Vec<u8>) -> Vec<u8> {
        let mut p = vec![0, 50, 0, 10, 0, 0];
        p.extend(short("q"));
        p.push(0);
        p.extend(args);
        frame(1, &p)
    }

    #[test]
    fn duplicate_keys_are_refused_wherever_the_proxy_reads_tables() {
        let dlx = table(&[
            ("x-dead-letter-exchange", string("allowed")),
            ("x-dead-letter-exchange", string("denied")),
        ]);
        assert_eq!(
            check_frame(&queue_declare(dlx)),
            Err(TableError::Duplicate("x-dead-letter-exchange".into()))
        );
        let fine = table(&[
            ("x-dead-letter-exchange", string("allowed")),
            ("x-message-ttl", vec![b'I', 0, 0, 0, 1]),
            ("x-flags", vec![b'A', 0, 0, 0, 2, b't', 1]),
        ]);
        assert_eq!(check_frame(&queue_declare(fine)), Ok(()));
        // Another type for the second value changes nothing.
        let typed = table(&[
            ("alternate-exchange", string("a")),
            ("alternate-exchange", vec![b's', 0, 1]),
        ]);
        let mut p = vec![0, 40, 0, 10, 0, 0];
        p.extend(short("ex"));
        p.extend(short("topic"));
        p.push(0);
        p.extend(typed);
        assert!(matches!(
            check_frame(&frame(1, &p)),
            Err(TableError::Duplicate(_))
        ));
        // Nested tables count too.
        let nested = table(&[(
            "x-inner",
            [vec![b'F'], table(&[("k", string("1")), ("k", string("2"))])].concat(),
        )]);
        assert!(matches!(
            check_frame(&queue_declare(nested)),
            Err(TableError::Duplicate(_))
        ));
        // A type RabbitMQ does not know, and a cut-off table.
        assert_eq!(
            check_frame(&queue_declare(table(&[("k", vec![b'?'])]))),
            Err(TableError::Malformed)
        );
        assert_eq!(
            check_frame(&queue_declare(vec![0, 0, 0, 9, 1])),
            Err(TableError::Malformed)
        );
    }

    #[test]
    fn content_headers_are_walked_past_the_properties_before_them() {
        let headers = table(&[("CC", string("a")), ("CC", string("b"))]);
        let mut p = vec![0, 60, 0, 0];
        p.extend(0u64.to_be_bytes());
        p.extend(((1u16 << 15) | (1 << 13)).to_be_bytes());
        p.extend(short("application/json"));
        p.extend(headers);
        assert_eq!(
            check_frame(&frame(2, &p)),
            Err(TableError::Duplicate("CC".into()))
        );
        // Without a headers table there is nothing to check.
        let mut p = vec![0, 60, 0, 0];
        p.extend(0u64.to_be_bytes());
        p.extend((1u16 << 15).to_be_bytes());
        p.extend(short("text/plain"));
        assert_eq!(check_frame(&frame(2, &p)), Ok(()));
        // Methods without tables and other frames pass untouched.
        assert_eq!(check_frame(&frame(1, &[0, 60, 0, 40, 0, 0])), Ok(()));
        assert_eq!(check_frame(&frame(8, &[])), Ok(()));
    }
}
