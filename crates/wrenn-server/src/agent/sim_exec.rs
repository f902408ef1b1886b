//! The simulated agent's command interpreter: `echo`, `true`, `false`, `pwd`, `env`,
//! `cat FILE`, `seq N`, `python3 -c 'print(INTEGER EXPRESSION)'`, `sh -c 'exit N'` and `sh -c`
//! of one simple command of those (quoted words, no operators). Anything else exits 127.
//! (`sleep` is the simulated agent's own: it waits.) It knows nothing of sandboxes.

use std::collections::HashMap;
use std::path::PathBuf;

/// One output stream held to `cap` bytes as envd holds it (cut on a character boundary):
/// `(kept, truncated, total bytes)`.
pub(super) fn cap_output(mut out: String, cap: usize) -> (String, bool, u64) {
    let total = out.len() as u64;
    if out.len() <= cap {
        return (out, false, total);
    }
    let mut keep = cap;
    while !out.is_char_boundary(keep) {
        keep -= 1;
    }
    out.truncate(keep);
    (out, true, total)
}

/// The simulated command interpreter: `(stdout, stderr, exit_code)`.
pub(super) fn run_command(
    cmd: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: Option<&str>,
    files: &HashMap<String, PathBuf>,
) -> (String, String, i32) {
    match cmd {
        "echo" => (format!("{}\n", args.join(" ")), String::new(), 0),
        "true" => (String::new(), String::new(), 0),
        "false" => (String::new(), String::new(), 1),
        "pwd" => (
            format!("{}\n", cwd.unwrap_or("/home/user")),
            String::new(),
            0,
        ),
        "env" => {
            let out: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            (out, String::new(), 0)
        }
        "cat" => {
            let mut out = String::new();
            for a in args {
                match files.get(a).map(std::fs::read) {
                    Some(Ok(bytes)) => out.push_str(&String::from_utf8_lossy(&bytes)),
                    _ => return (out, format!("cat: {a}: No such file or directory\n"), 1),
                }
            }
            (out, String::new(), 0)
        }
        "seq" => match args.first().and_then(|n| n.parse::<u32>().ok()) {
            Some(n) => (
                (1..=n).map(|i| format!("{i}\n")).collect(),
                String::new(),
                0,
            ),
            None => (String::new(), "seq: missing operand\n".into(), 1),
        },
        "sh" if args.len() == 2 && args[0] == "-c" => {
            let script = args[1].trim();
            match script
                .strip_prefix("exit ")
                .map(|n| n.trim().parse::<i32>())
            {
                Some(Ok(code)) => (String::new(), String::new(), code),
                _ => match split_simple_command(script) {
                    Some(words) if words[0] != "sh" => {
                        run_command(&words[0], &words[1..], env, cwd, files)
                    }
                    _ => (
                        String::new(),
                        format!("sim: unsupported script {script:?}\n"),
                        2,
                    ),
                },
            }
        }
        "python3" if args.len() == 2 && args[0] == "-c" => {
            let value = args[1]
                .trim()
                .strip_prefix("print(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|e| IntExpr(e.as_bytes(), 0).eval());
            match value {
                Some(v) => (format!("{v}\n"), String::new(), 0),
                None => (
                    String::new(),
                    format!("sim: unsupported python {:?}\n", args[1]),
                    1,
                ),
            }
        }
        other => (
            String::new(),
            format!("sim: {other}: command not found\n"),
            127,
        ),
    }
}

/// Splits one simple command into words (single and double quotes, no escapes); `None` when
/// the script uses shell syntax the simulation does not interpret.
fn split_simple_command(script: &str) -> Option<Vec<String>> {
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in script.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => (quote, in_word) = (Some(c), true),
            (None, c) if c.is_whitespace() => {
                if std::mem::take(&mut in_word) {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, ';' | '&' | '|' | '<' | '>' | '$' | '`' | '(' | ')' | '\\' | '*' | '?') => {
                return None
            }
            (None, c) => (word, in_word) = (word + &c.to_string(), true),
        }
    }
    if in_word {
        words.push(word);
    }
    (quote.is_none() && !words.is_empty()).then_some(words)
}

/// Integer arithmetic as Python prints it: `+ - * // %` and parentheses, checked.
struct IntExpr<'a>(&'a [u8], usize);

impl IntExpr<'_> {
    fn eval(mut self) -> Option<i64> {
        let v = self.sum()?;
        self.skip_ws();
        (self.1 == self.0.len()).then_some(v)
    }
    fn skip_ws(&mut self) {
        while self.0.get(self.1).is_some_and(|c| c.is_ascii_whitespace()) {
            self.1 += 1;
        }
    }
    fn eat(&mut self, op: &str) -> bool {
        self.skip_ws();
        let hit = self.0[self.1..].starts_with(op.as_bytes());
        if hit {
            self.1 += op.len();
        }
        hit
    }
    fn sum(&mut self) -> Option<i64> {
        let mut v = self.product()?;
        loop {
            if self.eat("+") {
                v = v.checked_add(self.product()?)?;
            } else if self.eat("-") {
                v = v.checked_sub(self.product()?)?;
            } else {
                return Some(v);
            }
        }
    }
    fn product(&mut self) -> Option<i64> {
        let mut v = self.atom()?;
        loop {
            if self.eat("*") {
                v = v.checked_mul(self.atom()?)?;
            } else if self.eat("//") {
                let d = self.atom()?;
                let (q, r) = (v.checked_div(d)?, v.checked_rem(d)?);
                v = if r != 0 && (r < 0) != (d < 0) {
                    q - 1
                } else {
                    q
                };
            } else if self.eat("%") {
                let d = self.atom()?;
                let r = v.checked_rem(d)?;
                v = if r != 0 && (r < 0) != (d < 0) {
                    r + d
                } else {
                    r
                };
            } else {
                return Some(v);
            }
        }
    }
    fn atom(&mut self) -> Option<i64> {
        if self.eat("(") {
            let v = self.sum()?;
            return self.eat(")").then_some(v);
        }
        if self.eat("-") {
            return self.atom()?.checked_neg();
        }
        let start = self.1;
        while self.0.get(self.1).is_some_and(|c| c.is_ascii_digit()) {
            self.1 += 1;
        }
        std::str::from_utf8(&self.0[start..self.1])
            .ok()?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str, args: &[&str]) -> (String, String, i32) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_command(cmd, &args, &Default::default(), None, &HashMap::new())
    }

    #[test]
    fn output_is_cut_at_the_cap_on_a_character_boundary() {
        assert_eq!(cap_output("abc".into(), 3), ("abc".into(), false, 3));
        assert_eq!(cap_output("abcd".into(), 3), ("abc".into(), true, 4));
        // "é" is two bytes: a cap inside it keeps what comes before.
        assert_eq!(cap_output("aé".into(), 2), ("a".into(), true, 3));
    }

    #[test]
    fn python_prints_integer_expressions_like_python() {
        assert_eq!(run("python3", &["-c", "print(6*7)"]).0, "42\n");
        assert_eq!(run("python3", &["-c", "print((1 + 2) * -3)"]).0, "-9\n");
        assert_eq!(run("python3", &["-c", "print(-7 // 2, )"]).2, 1);
        assert_eq!(run("python3", &["-c", "print(-7 // 2)"]).0, "-4\n");
        assert_eq!(run("python3", &["-c", "print(-7 % 3)"]).0, "2\n");
        assert_eq!(run("python3", &["-c", "print(1 // 0)"]).2, 1);
        assert_eq!(run("python3", &["-c", "import os"]).2, 1);
    }

    #[test]
    fn sh_runs_one_simple_command() {
        assert_eq!(run("sh", &["-c", "echo 'a  b' c"]).0, "a  b c\n");
        assert_eq!(run("sh", &["-c", "python3 -c 'print(2+3)'"]).0, "5\n");
        assert_eq!(run("sh", &["-c", "exit 3"]).2, 3);
        assert_eq!(run("sh", &["-c", "echo a; echo b"]).2, 2);
        assert_eq!(run("sh", &["-c", "echo 'open"]).2, 2);
    }
}
