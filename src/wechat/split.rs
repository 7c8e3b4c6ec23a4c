//! Splitting a long text answer into parts WeChat accepts (a text message's Content is at most
//! 2048 bytes), for `late` rules: the first part is the reply, the rest are delivered later.
//!
//! Every part ends on a UTF-8 character boundary and, where the text allows, after a line end,
//! else after a sentence end (`。！？；…` or `.!?;` before a space), else after a space or a
//! comma (`，、,`), looked for in the last half of the part so that no part is needlessly short;
//! only text with none of these is cut at the last character boundary. Nothing is trimmed:
//! the parts concatenated are exactly the input, so nothing is lost or repeated.

/// Splits `text` into parts of at most `max` bytes (`max` ≥ 4, the longest UTF-8 character).
/// Returns the parts in order; one part (the whole text) when it fits; none for an empty text.
pub fn split(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut parts = Vec::with_capacity(text.len() / max + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let cut = cut_point(rest, max);
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// Where to end the part that starts `s`: `s.len()` when it fits, else a break at most `max`.
fn cut_point(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut limit = max;
    while !s.is_char_boundary(limit) {
        limit -= 1;
    }
    let window = &s[..limit];
    // A break in the first half would make a needlessly short part; cut there only when
    // nothing better exists.
    let floor = limit / 2;
    let after = |i: usize, c: char| i + c.len_utf8();
    let mut line = None;
    let mut sentence = None;
    let mut soft = None;
    let mut chars = window.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = after(i, c);
        if end <= floor {
            continue;
        }
        let next = chars
            .peek()
            .map(|&(_, n)| n)
            .or_else(|| s[end..].chars().next());
        match c {
            '\n' => line = Some(end),
            '。' | '！' | '？' | '；' | '…' => sentence = Some(end),
            '.' | '!' | '?' | ';' if next.is_none_or(char::is_whitespace) => {
                sentence = Some(end);
            }
            '，' | '、' | ',' => soft = Some(end),
            c if c.is_whitespace() => soft = Some(end),
            _ => {}
        }
    }
    line.or(sentence).or(soft).unwrap_or(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize) -> Vec<&str> {
        let parts = split(text, max);
        assert_eq!(parts.concat(), text, "concatenation is the input");
        for p in &parts {
            assert!(!p.is_empty(), "no empty part");
            assert!(p.len() <= max, "part of {} bytes > {max}", p.len());
        }
        parts
    }

    #[test]
    fn short_text_is_one_part_and_empty_is_none() {
        assert_eq!(check("你好", 2048), ["你好"]);
        assert!(split("", 2048).is_empty());
        let exact = "a".repeat(2048);
        assert_eq!(check(&exact, 2048).len(), 1);
    }

    #[test]
    fn prefers_line_ends_then_sentences_then_spaces() {
        let text = format!(
            "{}\n{}。{} {}",
            "a".repeat(30),
            "b".repeat(10),
            "c".repeat(3),
            "d".repeat(20)
        );
        // Window of 50 bytes: the line end (byte 31) is in the last half.
        assert_eq!(check(&text, 50)[0], format!("{}\n", "a".repeat(30)));
        let text = format!("{}。{} {}", "b".repeat(40), "c".repeat(5), "d".repeat(40));
        assert_eq!(check(&text, 60)[0], format!("{}。", "b".repeat(40)));
        let text = format!("{} {}", "x".repeat(40), "y".repeat(40));
        assert_eq!(check(&text, 60)[0], format!("{} ", "x".repeat(40)));
        // "3.14" is not a sentence end; the space after "pi" is the break.
        let text = format!("{} pi 3.14{}", "x".repeat(30), "y".repeat(40));
        assert_eq!(check(&text, 45)[0], format!("{} pi ", "x".repeat(30)));
    }

    #[test]
    fn never_cuts_inside_a_character() {
        // 3-byte CJK characters, no break anywhere: cut at the last boundary ≤ max.
        let text = "汉".repeat(1000);
        let parts = check(&text, 2048);
        assert_eq!(parts[0].len(), 2046);
        // 4-byte emoji.
        let text = "😀".repeat(600);
        let parts = check(&text, 2047);
        assert_eq!(parts[0].len(), 2044);
    }

    #[test]
    fn a_break_in_the_first_half_is_not_taken_when_a_hard_cut_is_longer() {
        let text = format!("ab\n{}", "z".repeat(100));
        assert_eq!(check(&text, 40)[0].len(), 40);
    }

    #[test]
    fn mixed_text_of_many_sizes_round_trips() {
        // A deterministic pseudo-random mix of ASCII, CJK, emoji, punctuation and newlines.
        let pieces = [
            "a", "bc ", "。", "汉字", "😀", "\n", ". ", "！", "，", "word ", "…", "?", "e\u{301}",
        ];
        let mut seed = 0x2545_f491_u32;
        for round in 0..50 {
            let mut text = String::new();
            for _ in 0..(200 + round * 40) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                text.push_str(pieces[seed as usize % pieces.len()]);
            }
            for max in [4, 5, 7, 64, 100, 2048] {
                check(&text, max);
            }
        }
    }
}
