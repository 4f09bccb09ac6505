//! What makes a conversion findable: its description and tags, and the rules every store shares
//! for full-text search and sorting.
//!
//! **Tags** are lowercase words of ASCII letters, digits, `_` and `-` (1 to [`MAX_TAG_CHARS`]
//! characters, at most [`MAX_TAGS`] per conversion; ASCII so that the API's schema can state
//! the rule exactly: `^[A-Za-z0-9_-]{1,64}$`). Given tags are lowercased; `#hashtags` in
//! the description become tags too; duplicates collapse and the set is kept sorted. Anything
//! else is refused with a [`MetadataError`], never silently cut.
//!
//! **Full text** (`ListQuery::text`) matches the input file name and the description. Both sides
//! are split into words the same way ([`words`]: runs of Unicode letters and digits, lowercased),
//! so every backend indexes the same words; each query word must match the start of a word's
//! English stem (`render` and `rend` find "Rendering"; `rendered` finds "renders"): a
//! stemmed prefix match, AND-ed over the query's words. Only the start of a word matches, so
//! `acket` does not find `bracket`. The memory store stems with the Snowball English stemmer,
//! PostgreSQL with its `english_stem` (the same algorithm, without stop words) and SQLite with
//! FTS5's `porter` tokenizer; they agree on regular English inflections, not on every rare word.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::ConversionId;
use crate::conversion::Conversion;

/// At most this many tags on one conversion (given and from hashtags together).
pub const MAX_TAGS: usize = 32;
/// A tag is at most this many characters.
pub const MAX_TAG_CHARS: usize = 64;
/// A description is at most this many characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4000;
/// A full-text query is at most this many characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// A full-text query has at most this many words (which any query within
/// [`MAX_QUERY_CHARS`] keeps: words are separated by at least one character).
pub const MAX_QUERY_WORDS: usize = MAX_QUERY_CHARS / 2;
/// A list filters on at most this many tags (any of them).
pub const MAX_TAG_FILTERS: usize = 32;

/// A description or tag that breaks the rules above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The description is too long.
    #[error("description has {chars} characters; at most {MAX_DESCRIPTION_CHARS} are allowed")]
    DescriptionTooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// A tag is empty, too long or has a character tags may not have.
    #[error(
        "tag {tag:?} is not allowed: tags are 1 to {MAX_TAG_CHARS} ASCII letters, digits, '_' or '-'"
    )]
    InvalidTag {
        /// The tag (its first 80 characters).
        tag: String,
    },
    /// Too many tags.
    #[error("{count} tags (given and #hashtags together); at most {MAX_TAGS} are allowed")]
    TooManyTags {
        /// How many distinct tags there were.
        count: usize,
    },
}

/// A full-text query or tag filter that breaks the limits above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The text is too long or has too many words.
    #[error("search text is limited to {MAX_QUERY_CHARS} characters and {MAX_QUERY_WORDS} words")]
    TextTooLong,
    /// Too many tags to filter on.
    #[error("at most {MAX_TAG_FILTERS} tags may be filtered on")]
    TooManyTags,
    /// A tag filter that no tag can equal.
    #[error(transparent)]
    Tag(#[from] MetadataError),
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// One tag, lowercased, or why it is not one.
pub fn normalize_tag(tag: &str) -> Result<String, MetadataError> {
    let tag = tag.trim();
    let chars = tag.chars().count();
    if chars == 0 || chars > MAX_TAG_CHARS || !tag.chars().all(tag_char) {
        return Err(MetadataError::InvalidTag { tag: short(tag) });
    }
    Ok(tag.to_ascii_lowercase())
}

/// The `#hashtags` of a text: `#` followed by tag characters, not preceded by a tag character
/// (so `a#b` is not one). A hashtag longer than [`MAX_TAG_CHARS`] is an error.
pub fn hashtags(text: &str) -> Result<Vec<String>, MetadataError> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '#' && !prev.is_some_and(tag_char) {
            let start = i + 1;
            let mut end = start;
            while let Some(&(j, d)) = chars.peek() {
                if !tag_char(d) {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            if end > start {
                out.push(normalize_tag(&text[start..end])?);
            }
            prev = text[..end].chars().next_back();
            continue;
        }
        prev = Some(c);
    }
    Ok(out)
}

/// A submission's description and tags as stored: the description checked (an empty one is
/// none), the tags normalised, merged with the description's hashtags, deduplicated and sorted.
pub fn metadata(
    description: Option<String>,
    tags: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<(Option<String>, Vec<String>), MetadataError> {
    let description = description.filter(|d| !d.trim().is_empty());
    let mut set = BTreeSet::new();
    for tag in tags {
        set.insert(normalize_tag(tag.as_ref())?);
        if set.len() > MAX_TAGS {
            return Err(MetadataError::TooManyTags { count: set.len() });
        }
    }
    if let Some(d) = &description {
        let chars = d.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(MetadataError::DescriptionTooLong { chars });
        }
        set.extend(hashtags(d)?);
    }
    if set.len() > MAX_TAGS {
        return Err(MetadataError::TooManyTags { count: set.len() });
    }
    Ok((description, set.into_iter().collect()))
}

/// The words of a text as every backend indexes them: maximal runs of Unicode letters and
/// digits, lowercased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The text a store indexes for a record: the words of its input name and description, joined
/// by spaces.
pub fn index_text(input_name: Option<&str>, description: Option<&str>) -> String {
    let mut out = String::new();
    for w in input_name.into_iter().chain(description).flat_map(words) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
    }
    out
}

/// The words of a full-text query, checked against the limits.
pub fn parse_query(text: &str) -> Result<Vec<String>, QueryError> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TextTooLong);
    }
    let terms: Vec<String> = words(text).collect();
    if terms.len() > MAX_QUERY_WORDS {
        return Err(QueryError::TextTooLong);
    }
    Ok(terms)
}

/// The words of a full-text query as stores use them: like [`parse_query`], but a query over the
/// limits (which the API refuses before it gets here) keeps only its first
/// [`MAX_QUERY_WORDS`] words of at most [`MAX_QUERY_CHARS`] characters, so no input can make
/// a backend query unbounded. No words at all means no text filter.
pub fn query_terms(text: &str) -> Vec<String> {
    words(text)
        .take(MAX_QUERY_WORDS)
        .map(|w| w.chars().take(MAX_QUERY_CHARS).collect())
        .collect()
}

/// The English stem of a lowercase word.
pub fn stem(word: &str) -> String {
    use std::sync::OnceLock;
    static STEMMER: OnceLock<rust_stemmers::Stemmer> = OnceLock::new();
    STEMMER
        .get_or_init(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English))
        .stem(word)
        .into_owned()
}

/// Whether a record's file name and description match every query term, as the memory store
/// decides it (see the module docs).
pub fn text_matches(terms: &[String], input_name: Option<&str>, description: Option<&str>) -> bool {
    if terms.is_empty() {
        return true;
    }
    let stems: Vec<String> = input_name
        .into_iter()
        .chain(description)
        .flat_map(words)
        .map(|w| stem(&w))
        .collect();
    terms.iter().all(|t| {
        let t = stem(t);
        stems.iter().any(|s| s.starts_with(&t))
    })
}

/// The order of a list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// Newest created first (`-created`, the default).
    #[default]
    CreatedDesc,
    /// Oldest created first (`created`).
    CreatedAsc,
    /// Most recently finished first (`-finished`); records not finished are left out.
    FinishedDesc,
    /// Earliest finished first (`finished`); records not finished are left out.
    FinishedAsc,
}

impl Sort {
    /// Every order.
    pub const ALL: [Sort; 4] = [
        Sort::CreatedDesc,
        Sort::CreatedAsc,
        Sort::FinishedDesc,
        Sort::FinishedAsc,
    ];

    /// The name in `?sort=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::CreatedDesc => "-created",
            Sort::CreatedAsc => "created",
            Sort::FinishedDesc => "-finished",
            Sort::FinishedAsc => "finished",
        }
    }

    /// Whether the list runs from the largest key down.
    pub fn descending(self) -> bool {
        matches!(self, Sort::CreatedDesc | Sort::FinishedDesc)
    }

    /// Whether the key is the finish time (records without one are left out).
    pub fn by_finished(self) -> bool {
        matches!(self, Sort::FinishedDesc | Sort::FinishedAsc)
    }

    /// A record's sort key: its time (creation or finish) and id; `None` when sorting by finish
    /// time and it has not finished.
    pub fn key(self, c: &Conversion) -> Option<(DateTime<Utc>, ConversionId)> {
        if self.by_finished() {
            c.finished_at.map(|t| (t, c.id))
        } else {
            Some((c.created_at, c.id))
        }
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown sort {0:?}: expected created, -created, finished or -finished")]
pub struct ParseSortError(pub String);

impl FromStr for Sort {
    type Err = ParseSortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sort::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| ParseSortError(short(s)))
    }
}

/// Where the next page starts: the sort key (time and id) of the last record of the previous
/// page. Printed as `<unix nanoseconds>_<id>`; it only makes sense with the sort it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The last record's creation or finish time.
    pub at: DateTime<Utc>,
    /// The last record's id (breaks ties between equal times).
    pub id: ConversionId,
}

impl Cursor {
    /// The cursor after `c` in `sort` order (`None` if `c` has no key in that order).
    pub fn after(c: &Conversion, sort: Sort) -> Option<Self> {
        sort.key(c).map(|(at, id)| Cursor { at, id })
    }

    /// Whether a record with this key comes after the cursor in `sort` order.
    pub fn precedes(&self, key: (DateTime<Utc>, ConversionId), sort: Sort) -> bool {
        if sort.descending() {
            key < (self.at, self.id)
        } else {
            key > (self.at, self.id)
        }
    }

    /// The time as Unix nanoseconds.
    pub fn nanos(&self) -> i64 {
        self.at.timestamp_nanos_opt().unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.nanos(), self.id)
    }
}

/// A string that is not a cursor.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cursor {0:?} is not one a previous page gave")]
pub struct ParseCursorError(pub String);

impl FromStr for Cursor {
    type Err = ParseCursorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseCursorError(short(s));
        let (nanos, id) = s.split_once('_').ok_or_else(bad)?;
        if nanos.is_empty() || !nanos.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let nanos: i64 = nanos.parse().map_err(|_| bad())?;
        let id: ConversionId = id.parse().map_err(|_| bad())?;
        Ok(Cursor {
            at: DateTime::from_timestamp_nanos(nanos),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised_and_bounded() {
        let (d, tags) = metadata(
            Some("Sunset over #Alps and #alps, #snow-2026; not a#tag".into()),
            ["Photo", "photo", "b_w"],
        )
        .expect("ok");
        assert!(d.is_some());
        assert_eq!(tags, ["alps", "b_w", "photo", "snow-2026"]);
        assert!(matches!(
            metadata(None, ["has space"]),
            Err(MetadataError::InvalidTag { .. })
        ));
        assert!(metadata(None, [""]).is_err());
        assert!(metadata(None, ["x".repeat(MAX_TAG_CHARS + 1)]).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            metadata(None, &many),
            Err(MetadataError::TooManyTags { .. })
        ));
        assert!(matches!(
            metadata(Some("é".repeat(MAX_DESCRIPTION_CHARS + 1)), [""; 0]),
            Err(MetadataError::DescriptionTooLong { .. })
        ));
        assert_eq!(metadata(Some("  ".into()), [""; 0]).expect("ok").0, None);
        assert!(hashtags(&format!("#{}", "a".repeat(65))).is_err());
        assert_eq!(hashtags("# #a#b ##c").expect("ok"), ["a", "c"]);
    }

    #[test]
    fn words_and_stems() {
        assert_eq!(
            index_text(Some("Bracket-5.STL"), Some("Rendering, renders!")),
            "bracket 5 stl rendering renders"
        );
        let terms = |q: &str| query_terms(q);
        let name = Some("Bracket-5.STL");
        let desc = Some("A rendering of the bracket");
        assert!(text_matches(&terms("bracket"), name, desc));
        assert!(text_matches(&terms("BRACK"), name, desc));
        assert!(text_matches(&terms("rendered brackets"), name, desc));
        assert!(text_matches(&terms("rend"), name, desc));
        assert!(!text_matches(&terms("acket"), name, desc));
        assert!(!text_matches(&terms("bracket gear"), name, desc));
        assert!(text_matches(&terms("  !!! "), name, desc));
        assert!(parse_query(&"a ".repeat(128)).is_ok());
        assert!(metadata(None, ["ünï"]).is_err());
        assert!(parse_query(&"a".repeat(257)).is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            at: DateTime::from_timestamp_nanos(1_700_000_000_123_456_789),
            id: ConversionId::new(),
        };
        assert_eq!(c.to_string().parse::<Cursor>().expect("parse"), c);
        for bad in [
            "",
            "_",
            "12",
            "x_y",
            "-1_0190b5b0-0000-7000-8000-000000000000",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        for s in Sort::ALL {
            assert_eq!(s.as_str().parse::<Sort>().expect("sort"), s);
        }
    }
}
