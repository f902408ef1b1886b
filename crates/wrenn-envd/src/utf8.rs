//! Turns a byte stream arriving in arbitrary chunks into text messages without ever splitting
//! a UTF-8 character between two messages. Invalid bytes become U+FFFD; a character cut at the
//! end of a chunk is held back and completed by the next one.
//!
//! Pure data handling: no I/O here.

/// Decodes one output stream (stdout or stderr) chunk by chunk.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    /// The start of a character whose remaining bytes have not arrived yet (at most 3 bytes).
    carry: Vec<u8>,
}

impl ChunkDecoder {
    /// Decodes `chunk`, returning the text that is complete so far (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(chunk);
        let split = complete_prefix_len(&bytes);
        self.carry = bytes.split_off(split);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Flushes whatever is held back at end of stream (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// The length of `bytes` without a trailing incomplete UTF-8 sequence.
pub fn complete_prefix_len(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // A character is at most 4 bytes, so an incomplete one starts in the last 3.
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return len, // ASCII or a byte that can never start a character
        };
        // Hold back only a sequence that is a valid start so far; otherwise let the lossy
        // conversion replace it now.
        if back < needed
            && std::str::from_utf8(&bytes[len - back..]).is_err_and(|e| e.error_len().is_none())
        {
            return len - back;
        }
        return len;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        let text = "aé€😀z";
        let bytes = text.as_bytes();
        // Every way of cutting the input into two chunks gives back the same text, and no
        // chunk contains a replacement character.
        for cut in 0..=bytes.len() {
            let mut d = ChunkDecoder::default();
            let a = d.push(&bytes[..cut]);
            let b = d.push(&bytes[cut..]);
            let c = d.finish();
            assert!(
                !a.contains('\u{FFFD}') && !b.contains('\u{FFFD}'),
                "cut {cut}"
            );
            assert_eq!(format!("{a}{b}{c}"), text, "cut {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "größe 😀 ok";
        let mut d = ChunkDecoder::default();
        let mut out = String::new();
        for b in text.as_bytes() {
            out.push_str(&d.push(std::slice::from_ref(b)));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let mut d = ChunkDecoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        // A lone continuation byte at the end is not a character start: replaced at once.
        assert_eq!(d.push(b"c\x80"), "c\u{FFFD}");
        // A truncated character at end of stream is replaced on finish.
        assert_eq!(d.push(b"d\xe2\x82"), "d");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
