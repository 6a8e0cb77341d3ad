//! The rules a backup's archive must keep, checked member by member as the
//! walk passes them: names (one each, no NUL, no `..`), kinds, split parts
//! in order, and every member against the member lists and the inner
//! manifest.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::{MANIFEST_CAP, NAME_MAX, PENDING_CAP};
use crate::archive::{self, EntryKind};
use crate::manifest::{
    self, HashKind, Hasher, Inner, ListEntry, MemberEntry, MemberList, INNER_NAME,
};
use crate::pipeline::restore::extract::safe_relative;

/// The most directories the walk remembers to refuse a file or symlink in
/// one's place (128 MiB or so); restore refuses the rest when it writes.
const DIRS_CAP: usize = 8 << 20;

/// A logical member being read: its parts' bytes all feed one hash.
pub(super) struct Logical {
    pub(super) name: Vec<u8>,
    pub(super) kind: &'static str,
    pub(super) hash: Hasher,
    pub(super) size: u64,
    /// For a split stream, the part expected next.
    pub(super) next_part: Option<u32>,
}

/// A logical member read whole, waiting for the list that names it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) name: Vec<u8>,
    pub(super) kind: &'static str,
    pub(super) size: u64,
    pub(super) digest: [u8; 32],
    pub(super) parts: u32,
}

/// Matches the members as they pass against the member lists and the inner
/// manifest. A list names exactly the members since the previous list, in
/// order, so only those are held; of the rest, a 16-byte key per name
/// refuses a second member of one name. Memory stays flat with the number
/// of members (the first manifest format, with no lists, holds them all).
pub(super) struct Checker {
    /// The digest the archive's members carry (the header says which).
    pub(super) hash: HashKind,
    pub(super) current: Option<Logical>,
    pub(super) pending: Vec<Seen>,
    /// Each name's key, with what the member is (a directory, or the
    /// file or symlink no later member may lie below).
    pub(super) names: HashMap<[u8; 16], Option<&'static str>>,
    /// The keys of the directories the members so far lie in (up to
    /// [`DIRS_CAP`]): no later file or symlink may take one's place.
    pub(super) dirs: HashSet<[u8; 16]>,
    pub(super) lists: Vec<ListEntry>,
    pub(super) members: usize,
    /// [`PENDING_CAP`], smaller in tests.
    pub(super) cap: usize,
    /// The bytes of the names (and parts' names) since the last list: a list
    /// naming more than [`MANIFEST_CAP`] of them could never be read.
    pub(super) pending_bytes: u64,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            hash: HashKind::Blake3,
            current: None,
            pending: Vec::new(),
            names: HashMap::new(),
            dirs: HashSet::new(),
            lists: Vec::new(),
            members: 0,
            cap: PENDING_CAP,
            pending_bytes: 0,
        }
    }
}

impl Checker {
    /// A new logical member (or the next part of the current one).
    pub(super) fn start(
        &mut self,
        raw: &[u8],
        kind: &EntryKind<'_>,
    ) -> Result<(Vec<u8>, Option<u32>), String> {
        if raw.contains(&0) {
            // Only a GNU long name or a PAX record can carry one; no file
            // name holds it, and the extractor could not create it.
            return Err("a name with a NUL byte".into());
        }
        if !raw.starts_with(b"files/") && std::str::from_utf8(raw).is_err() {
            // Only file names come from outside coffer; dumps, streams and
            // its own members are named in UTF-8, and what loads them
            // matches them by name.
            return Err("a name that is not UTF-8 outside files/".into());
        }
        let split = std::str::from_utf8(raw).ok().and_then(archive::split_part);
        if split.is_some() && !matches!(kind, EntryKind::File) {
            // Only streams are split, and a stream's parts are files.
            return Err("a part of a split stream that is not a file".into());
        }
        self.pending_bytes = self.pending_bytes.saturating_add(raw.len() as u64);
        if self.pending_bytes > MANIFEST_CAP {
            return Err(format!(
                "names of more than {MANIFEST_CAP} bytes without a member list"
            ));
        }
        if let Some((base, n)) = split {
            if n > 0 {
                // Parts are written one after another: part n continues the
                // member just read, or the archive is not coffer's.
                return match &mut self.current {
                    Some(l) if l.name == base.as_bytes() && l.next_part == Some(n) => {
                        l.next_part = Some(n + 1);
                        Ok((l.name.clone(), Some(n)))
                    }
                    _ => Err(format!("part {n} out of order")),
                };
            }
        }
        self.close();
        if self.pending.len() >= self.cap {
            return Err(format!(
                "more than {} members without a member list",
                self.cap
            ));
        }
        let (name, part) = match split {
            Some((base, n)) => (base.as_bytes().to_vec(), Some(n)),
            None => (raw.to_vec(), None),
        };
        // The extractor writes `a//b`, `./a/b`, `a/./b` and `a/b/` all to
        // `a/b`: one name, as far as a second member of it goes.
        let path = canonical(&name);
        if path.split(|&b| b == b'/').any(|c| c.len() > NAME_MAX) {
            // No file system restore writes to takes it; no source had it.
            return Err(format!("a name component longer than {NAME_MAX} bytes"));
        }
        let lists = manifest::LIST_DIR.as_bytes();
        if path == INNER_NAME.as_bytes()
            || path.starts_with(lists)
            || path == lists[..lists.len() - 1]
        {
            return Err(format!(
                "a member written where {INNER_NAME} or its lists go"
            ));
        }
        // Where restore would refuse to write it, so does the walk: one
        // rule for what a restorable name is.
        safe_relative(&name)?;
        self.place(&path, kind)?;
        self.current = Some(Logical {
            name: name.clone(),
            kind: match kind {
                EntryKind::Dir => "dir",
                EntryKind::Symlink(_) => "symlink",
                EntryKind::File => "file",
            },
            hash: self.hash.hasher(),
            size: 0,
            next_part: part.map(|n| n + 1),
        });
        Ok((name, part))
    }

    /// Places a member's (canonical) path in the tree the archive makes:
    /// one member per name, none below a file or symlink, no file or
    /// symlink where members made a directory.
    fn place(&mut self, path: &[u8], kind: &EntryKind<'_>) -> Result<(), String> {
        // The directories the member lies in, deepest last.
        let parents: Vec<usize> = path
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| (b == b'/').then_some(i))
            .collect();
        for &at in &parents {
            if let Some(Some(what)) = self.names.get(&archive::name_key(&path[..at])) {
                // Restore never writes through a link nor turns a file into
                // a directory: the archive contradicts itself.
                return Err(format!(
                    "a member below {}, which this archive made a {what}",
                    String::from_utf8_lossy(&path[..at])
                ));
            }
        }
        let key = archive::name_key(path);
        let leaf = match kind {
            EntryKind::Dir => None,
            EntryKind::Symlink(_) => Some("symlink"),
            EntryKind::File => Some("file"),
        };
        if let Some(what) = leaf {
            if self.dirs.contains(&key) {
                return Err(format!(
                    "a {what} where earlier members made {} a directory",
                    String::from_utf8_lossy(path)
                ));
            }
        }
        if self.names.insert(key, leaf).is_some() {
            return Err("a second member of this name".into());
        }
        // Deepest first: a directory already known has its parents known.
        for &at in parents.iter().rev() {
            if self.dirs.len() >= DIRS_CAP || !self.dirs.insert(archive::name_key(&path[..at])) {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn close(&mut self) {
        if let Some(l) = self.current.take() {
            self.pending.push(Seen {
                name: l.name,
                kind: l.kind,
                size: l.size,
                digest: l.hash.finalize(),
                parts: l.next_part.unwrap_or(0),
            });
            self.members += 1;
        }
    }

    /// What a list or manifest may take beyond `base` for the members now
    /// pending: room for each name escaped at the worst (six bytes a byte,
    /// `\u001f`; or its lossy form and base64), its fixed fields, and its
    /// parts' names. Memory follows the archive, never what a hostile list
    /// claims.
    pub(super) fn limit(&self, base: u64) -> u64 {
        let members: u64 = self
            .pending
            .iter()
            .map(|m| {
                let escaped = 8 * m.name.len() as u64;
                512 + escaped + u64::from(m.parts) * (escaped + 32)
            })
            .sum();
        base.saturating_add(members).min(MANIFEST_CAP)
    }

    /// The next member list: it must list exactly the pending members.
    pub(super) fn list(&mut self, path: &str, bytes: &[u8]) -> Result<(), String> {
        let list: MemberList =
            serde_json::from_slice(bytes).map_err(|e| format!("{path} is not valid: {e}"))?;
        if list.format != manifest::LIST_FORMAT {
            return Err(format!("{path}: unknown format {:?}", list.format));
        }
        self.matches(path, &list.members)?;
        self.lists.push(ListEntry {
            path: path.to_owned(),
            members: list.members.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// The inner manifest: its lists are the ones read, its members the
    /// ones since.
    pub(super) fn manifest(&mut self, m: &Inner) -> Result<(), String> {
        let want = if self.lists.is_empty() {
            manifest::INNER_FORMAT
        } else {
            manifest::INNER_FORMAT_V2
        };
        if m.format != want {
            return Err(format!(
                "{INNER_NAME} is {:?}, but the archive is {want:?} (a newer coffer may read it)",
                m.format
            ));
        }
        if m.member_lists != self.lists {
            return Err(format!(
                "{INNER_NAME} records {} member lists that differ from the {} in the archive",
                m.member_lists.len(),
                self.lists.len()
            ));
        }
        self.matches(INNER_NAME, &m.members)
    }

    /// `listed` against the pending members, in order, both ways.
    pub(super) fn matches(&self, what: &str, listed: &[MemberEntry]) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut add = |p: String| {
            if problems.len() < 8 {
                problems.push(p);
            }
        };
        if listed.len() != self.pending.len() {
            add(format!(
                "{what} lists {} members where the archive has {}",
                listed.len(),
                self.pending.len()
            ));
        }
        for (l, s) in listed.iter().zip(&self.pending) {
            let shown = String::from_utf8_lossy(&s.name);
            match l.name() {
                Ok(name) if name == s.name => {}
                Ok(_) => {
                    add(format!(
                        "{what} lists {} where the archive has {shown}",
                        l.path
                    ));
                    continue;
                }
                Err(e) => {
                    add(format!("{what}: {e}"));
                    continue;
                }
            }
            let kind_ok = match l.kind.as_str() {
                "file" | "stream" => s.kind == "file",
                other => other == s.kind,
            };
            if !kind_ok {
                add(format!("{shown}: a {}, {what} says a {}", s.kind, l.kind));
            }
            if l.size != s.size {
                add(format!("{shown}: {} bytes, {what} says {}", s.size, l.size));
            }
            match self.hash.of_entry(l) {
                Ok(Some(want)) => {
                    let digest = hex::encode(s.digest);
                    let same: bool =
                        subtle::ConstantTimeEq::ct_eq(digest.as_bytes(), want.as_bytes()).into();
                    if !same {
                        add(format!(
                            "{shown}: {} {digest} differs from {what}'s {want}",
                            self.hash.name()
                        ));
                    }
                }
                // A file's content must be compared with something.
                Ok(None) if kind_ok && s.kind == "file" => add(format!(
                    "{shown}: {what} gives no {} for a {}",
                    self.hash.name(),
                    l.kind
                )),
                Ok(None) => {}
                Err(e) => add(format!("{what}: {e}")),
            }
            let parts_ok = l.parts.len() == s.parts as usize
                && l.parts
                    .iter()
                    .enumerate()
                    .all(|(i, p)| *p == format!("{shown}.{i:06}"));
            if !parts_ok {
                add(format!(
                    "{shown}: {} parts, {what} lists {}",
                    s.parts,
                    l.parts.len()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// A member name as the extractor resolves it: empty and `.` components
/// dropped (`..` is kept; the extractor refuses it).
pub(super) fn canonical(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for c in name.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}
