//! The one SQL text of an audit search, for both backends: filters as bound values (never
//! SQL), keyset paging over (time, position) so a page costs the same anywhere in the log.

use mcpgate_types::{AuditQuery, Page};

use crate::DEFAULT_LIMIT;

/// The SQL spelling that differs between the backends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

/// A search as SQL text and its bound values, in placeholder order.
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
    /// The rows come oldest first (a page toward the present) and must be reversed.
    pub reverse: bool,
}

impl Dialect {
    fn table(self) -> &'static str {
        match self {
            Dialect::Sqlite => "audit",
            Dialect::Postgres => "mcpgate_audit",
        }
    }

    /// The column that holds an event's position in the order it was stored.
    fn pos(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "seq",
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

/// How free text is found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Text {
    /// `LIKE` over every event's JSON that the other filters leave.
    Scan,
    /// SQLite: the candidates are `hits` (a JSON array of positions), found in the trigram
    /// index `text.audit_text`, which holds the events at positions `from` to `to`; those
    /// on either side are scanned. `LIKE` confirms.
    Indexed { from: i64, to: i64, hits: String },
}

/// `SELECT pos, data` of the events matching `q` on `page`: newest first (once reversed
/// where [`Sql::reverse`] says so), or for [`Page::After`] in the order they were stored.
pub(crate) fn select(d: Dialect, q: &AuditQuery, page: Page) -> Sql {
    select_with(d, q, page, Text::Scan)
}

impl Sql {
    /// Appends `sql`, each `#` in it the placeholder of the next of `values`.
    fn bind(&mut self, d: Dialect, sql: &str, values: impl IntoIterator<Item = Arg>) {
        let mut values = values.into_iter();
        for (i, part) in sql.split('#').enumerate() {
            if i > 0 {
                if let Some(v) = values.next() {
                    self.args.push(v);
                }
                self.text.push_str(&d.placeholder(self.args.len()));
            }
            self.text.push_str(part);
        }
    }
}

/// [`select`], finding free text as `text` says.
pub(crate) fn select_with(d: Dialect, q: &AuditQuery, page: Page, text_plan: Text) -> Sql {
    let pos = d.pos();
    let mut sql = filtered(d, q, text_plan, &format!("{pos}, data"));
    let order = match page {
        Page::Newest => "time_us DESC, # DESC",
        Page::After(p) => {
            sql.bind(d, &format!(" AND {pos} > #"), [Arg::Int(p)]);
            "#"
        }
        Page::Older(c) | Page::Newer(c) => {
            let (cmp, order) = match page {
                Page::Older(_) => ("<", "time_us DESC, # DESC"),
                _ => (">", "time_us ASC, # ASC"),
            };
            // The plain bound lets the time index narrow the scan; the row value breaks ties.
            sql.bind(
                d,
                &format!(" AND time_us {cmp}= # AND (time_us, {pos}) {cmp} (#, #)"),
                [Arg::Int(c.time_us), Arg::Int(c.time_us), Arg::Int(c.pos)],
            );
            sql.reverse = matches!(page, Page::Newer(_));
            order
        }
    };
    sql.text.push_str(&format!(
        " ORDER BY {} LIMIT {}",
        order.replace('#', pos),
        q.limit.unwrap_or(DEFAULT_LIMIT)
    ));
    sql
}

/// `SELECT columns FROM the log WHERE` the filters of `q`, and their bound values.
fn filtered(d: Dialect, q: &AuditQuery, text_plan: Text, columns: &str) -> Sql {
    let mut sql = Sql {
        text: format!("SELECT {columns} FROM {} WHERE TRUE", d.table()),
        args: Vec::new(),
        reverse: false,
    };
    if let Some(t) = q.since_micros {
        sql.bind(d, " AND time_us >= #", [Arg::Int(t)]);
    }
    if let Some(t) = q.until_micros {
        sql.bind(d, " AND time_us < #", [Arg::Int(t)]);
    }
    for (col, v) in [
        ("id", &q.id),
        ("user_name", &q.user),
        ("app", &q.app),
        ("type", &q.kind),
        ("decision", &q.decision),
        ("session", &q.session),
        ("method", &q.method),
    ] {
        if let Some(v) = v {
            sql.bind(d, &format!(" AND {col} = #"), [Arg::Text(v.clone())]);
        }
    }
    if let Some(tool) = &q.tool {
        let (clause, value) = match d {
            _ if !tool.contains(['*', '?']) => (" AND tool = #", tool.clone()),
            // GLOB is case-sensitive like `=`; `[` is its only other special character.
            Dialect::Sqlite => (" AND tool GLOB #", tool.replace('[', "[[]")),
            Dialect::Postgres => (" AND tool LIKE # ESCAPE '\\'", glob_to_like(tool)),
        };
        sql.bind(d, clause, [Arg::Text(value)]);
    }
    if let Some(kind) = &q.user_kind {
        // Read from the event's JSON: only ever beside `user`, whose index narrows first.
        let clause = match d {
            Dialect::Sqlite => " AND json_extract(data, '$.user_kind') = #",
            Dialect::Postgres => " AND (data::jsonb ->> 'user_kind') = #",
        };
        sql.bind(d, clause, [Arg::Text(kind.clone())]);
    }
    if let Some(role) = &q.role {
        // `roles` holds `,a,b,`: a whole name between commas.
        let pattern = format!("%,{},%", like_escape(role));
        sql.bind(d, " AND roles LIKE # ESCAPE '\\'", [Arg::Text(pattern)]);
    }
    if let Some(needle) = q.text.as_deref().filter(|t| !t.is_empty()) {
        let op = match d {
            Dialect::Sqlite => "LIKE", // case-insensitive for ASCII
            Dialect::Postgres => "ILIKE",
        };
        let pattern = format!("%{}%", like_escape(needle));
        sql.bind(
            d,
            &format!(" AND data {op} # ESCAPE '\\'"),
            [Arg::Text(pattern)],
        );
        if let Text::Indexed { from, to, hits } = text_plan {
            // One set of positions (not an OR of conditions, which SQLite answers by
            // reading every event): the index's candidates and the events on either side.
            sql.bind(
                d,
                " AND rowid IN (SELECT value FROM json_each(#) \
                 UNION ALL SELECT rowid FROM audit WHERE rowid < # \
                 UNION ALL SELECT rowid FROM audit WHERE rowid > #)",
                [Arg::Text(hits), Arg::Int(from), Arg::Int(to)],
            );
        }
    }
    sql
}

/// A trigram of free text as the index keeps it: three characters, ASCII folded to lower
/// case as `LIKE` folds it (an event `LIKE` finds holds every trigram of the needle), 21
/// bits each in one integer.
pub(crate) type Gram = i64;

/// The trigrams of `text`, in order, repeats included.
pub(crate) fn grams(text: &str) -> impl Iterator<Item = Gram> + '_ {
    const CHAR: u32 = 21;
    let mut window: u64 = 0;
    let mut seen = 0u8;
    text.chars().filter_map(move |c| {
        window = ((window << CHAR) | u64::from(c.to_ascii_lowercase())) & (u64::MAX >> 1);
        seen = seen.saturating_add(1);
        (seen >= 3).then_some(window as Gram)
    })
}

/// Of the trigrams of hex digits with a letter among them (`a3f`, `bad`; not `404`), the
/// index keeps one in this many (a power of two), the same ones wherever they are found.
const HEX_KEPT: u64 = 4;

/// Whether the index keeps trigram `g` (part of its format: a change is a new one). Random
/// ids — an event's, a session's, a request's — are hex, and they were most of the
/// trigrams an event did not share with nearly every other, so most of what indexing it
/// cost. Each hex trigram with a letter is one of 3,096 that random hex spreads its
/// trigrams over evenly: each is in a few events in a hundred, too many for the index to
/// narrow a search alone, and an id searched for has dozens of them. One in
/// [`HEX_KEPT`] is kept, picked by a hash of the trigram, and the rest are never
/// looked up: a needle of them alone is found by reading the events, as one of common
/// trigrams is. Trigrams of decimal digits (counts, times, ports) are all kept.
pub(crate) fn indexed(g: Gram) -> bool {
    let mut letter = false;
    for shift in [42, 21, 0] {
        match (g >> shift) & 0x1f_ffff {
            0x30..=0x39 => {}
            0x61..=0x66 => letter = true,
            _ => return true,
        }
    }
    !letter || (g as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - HEX_KEPT.ilog2()) == 0
}

/// The distinct trigrams of `needle`, in the order they first appear. Empty for a needle
/// shorter than a trigram.
pub(crate) fn trigrams(needle: &str) -> Vec<Gram> {
    let mut seen = std::collections::HashSet::new();
    grams(needle).filter(|g| seen.insert(*g)).collect()
}

/// Appends the index's word for trigram `g`: the hex of its UTF-8 (a word of letters and
/// digits, which FTS5's `ascii` tokenizer keeps whole).
pub(crate) fn push_word(g: Gram, out: &mut String) {
    let mut utf8 = [0u8; 4];
    for shift in [42, 21, 0] {
        let c = char::from_u32(((g >> shift) & 0x1f_ffff) as u32).unwrap_or('\u{fffd}');
        mcpgate_types::push_hex(out, c.encode_utf8(&mut utf8).as_bytes());
    }
}

/// The index's word for trigram `g`, quoted as a term of an FTS5 query.
pub(crate) fn term(g: Gram) -> String {
    let mut out = String::from("\"");
    push_word(g, &mut out);
    out.push('"');
    out
}

/// The calls matching `q` counted by bucket of `width_us` (its start), tool, app, user and
/// whether they were denied.
pub(crate) fn tally(d: Dialect, q: &AuditQuery, width_us: i64, text_plan: Text) -> Sql {
    let width = width_us.max(1);
    let mut sql = filtered(
        d,
        q,
        text_plan,
        &format!(
            "time_us - (time_us % {width}), tool, app, user_name, \
             COALESCE(decision = 'deny', FALSE), count(*)"
        ),
    );
    sql.text.push_str(" GROUP BY 1, 2, 3, 4, 5");
    sql
}

/// The durations (ms) of the newest `limit` calls matching `q` that have one.
pub(crate) fn durations(d: Dialect, q: &AuditQuery, limit: u32, text_plan: Text) -> Sql {
    let expr = match d {
        Dialect::Sqlite => "CAST(json_extract(data, '$.duration_ms') AS REAL)",
        Dialect::Postgres => "(data::jsonb ->> 'duration_ms')::float8",
    };
    let mut sql = filtered(d, q, text_plan, expr);
    sql.text.push_str(&format!(
        " AND {expr} IS NOT NULL ORDER BY time_us DESC LIMIT {limit}"
    ));
    sql
}

/// `roles` as stored: every role name between commas, so a LIKE finds whole names.
pub(crate) fn roles_column(roles: &[String]) -> String {
    let mut s = String::from(",");
    for r in roles {
        s.push_str(r);
        s.push(',');
    }
    s
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgate_types::Cursor;

    /// Every trigram is kept but a fixed three in four of those of hex digits with a letter:
    /// the same ones on every call, and no other kind.
    #[test]
    fn the_index_leaves_out_three_in_four_hex_trigrams_with_a_letter() {
        let one = |t: &str| trigrams(t)[0];
        for t in [
            "404",
            "999",
            "ab-",
            "abg",
            "{\"a",
            "xyz",
            "ÿab",
            "a\u{100}b",
        ] {
            assert!(indexed(one(t)), "{t} is kept");
        }
        let hex = b"0123456789abcdef";
        let (mut with_letter, mut kept) = (0, 0);
        for a in hex {
            for b in hex {
                for c in hex {
                    let t = String::from_utf8(vec![*a, *b, *c]).unwrap();
                    let g = one(&t);
                    assert_eq!(indexed(g), indexed(one(&t.to_uppercase())), "{t}, folded");
                    if t.bytes().any(|x| x.is_ascii_alphabetic()) {
                        with_letter += 1;
                        kept += usize::from(indexed(g));
                    } else {
                        assert!(indexed(g), "{t}: decimal digits are all kept");
                    }
                }
            }
        }
        assert_eq!(with_letter, 3_096);
        // A hash, not exactly a quarter: within a few percent of it.
        assert!((700..850).contains(&kept), "{kept} of 3,096 kept");
    }

    #[test]
    fn free_text_asks_the_index_for_each_distinct_trigram() {
        let words = |t: &str| trigrams(t).into_iter().map(term).collect::<Vec<_>>();
        assert!(trigrams("ab").is_empty(), "shorter than a trigram");
        assert_eq!(
            words("abcab"),
            [r#""616263""#, r#""626361""#, r#""636162""#]
        );
        assert_eq!(
            words(r#"A"b%_"#),
            [r#""612262""#, r#""226225""#, r#""62255f""#],
            "ASCII folded as LIKE folds it, quotes and wildcards literal"
        );
        assert_eq!(
            words("ÜB€"),
            [r#""c39c62e282ac""#],
            "other letters as written"
        );
        assert_eq!(trigrams("Ünïcödé").len(), 5);
        assert_eq!(
            grams("abcabcab").count(),
            6,
            "every position's, repeats included"
        );
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let q = AuditQuery {
            user: Some("x' OR '1'='1".into()),
            tool: Some("read_*".into()),
            text: Some("50%_off".into()),
            ..Default::default()
        };
        let sql = select(
            Dialect::Postgres,
            &q,
            Page::Older(Cursor { time_us: 5, pos: 9 }),
        );
        assert!(!sql.text.contains("OR '1'"));
        assert!(sql.text.contains("tool LIKE $2"));
        assert!(
            sql.text.contains("(time_us, seq) < ($5, $6)"),
            "{}",
            sql.text
        );
        assert!(matches!(&sql.args[1], Arg::Text(t) if t == "read\\_%"));
        assert!(matches!(&sql.args[2], Arg::Text(t) if t == "%50\\%\\_off%"));
        assert!(!sql.reverse);
        let newer = select(
            Dialect::Sqlite,
            &q,
            Page::Newer(Cursor { time_us: 5, pos: 9 }),
        );
        assert!(newer.reverse && newer.text.contains("ORDER BY time_us ASC, rowid ASC"));
        assert_eq!(roles_column(&["a".into(), "b".into()]), ",a,b,");
    }
}
