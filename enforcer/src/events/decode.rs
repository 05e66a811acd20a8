//! Raw ring-buffer bytes -> the kernel's event struct.

use enforcer_common::event::{PacketEvent, EVENT_PACKET};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes; expected {1}")]
    Size(usize, usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

pub fn decode(bytes: &[u8]) -> Result<PacketEvent, DecodeError> {
    let want = std::mem::size_of::<PacketEvent>();
    if bytes.len() < want {
        return Err(DecodeError::Size(bytes.len(), want));
    }
    // SAFETY: PacketEvent is repr(C) plain data valid for any bytes; the length is checked
    // and read_unaligned needs no alignment.
    let ev: PacketEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if ev.kind != EVENT_PACKET {
        return Err(DecodeError::Kind(ev.kind));
    }
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(ev: &PacketEvent) -> Vec<u8> {
        // SAFETY: reading a repr(C) struct without padding as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const PacketEvent).cast::<u8>(),
                std::mem::size_of::<PacketEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut ev = PacketEvent::EMPTY;
        ev.dport = 5432;
        assert_eq!(decode(&bytes(&ev)).unwrap(), ev);
        assert_eq!(
            decode(&[0; 3]),
            Err(DecodeError::Size(3, std::mem::size_of::<PacketEvent>()))
        );
        ev.kind = 9;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Kind(9)));
    }
}
