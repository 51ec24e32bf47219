//! The node table: what every node service tells the primary when it
//! joins, and what the primary sends every node once all have joined.

use std::fmt::Write as _;

/// One node of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its index (0: the primary, where the user's program runs).
    pub index: u32,
    /// Its name as the launcher names it (what the other nodes connect to).
    pub host: String,
    /// Its own host name.
    pub hostname: String,
    /// The port its service listens on.
    pub port: u16,
    /// Its IPv4 addresses (loopback excluded).
    pub addresses: Vec<String>,
    /// CPUs the run may use there: the bootstrap's `cpus=` (a Slurm
    /// allocation's share of the node) when the launcher gave it, else the
    /// service's affinity mask.
    pub cpus: u32,
    /// Its memory, in bytes.
    pub memory: u64,
    /// The pid of its service (in its own PID namespace).
    pub service_pid: u32,
}

/// Why a table or a node's record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError(pub &'static str);

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed node record: {}", self.0)
    }
}

impl std::error::Error for TableError {}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], TableError> {
        let (a, b) = self.0.split_at_checked(n).ok_or(TableError("too short"))?;
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, TableError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, TableError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, TableError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<String, TableError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| TableError("not UTF-8"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl NodeInfo {
    /// This node, as its service sees it.
    pub fn local(index: u32, host: &str, port: u16) -> NodeInfo {
        NodeInfo {
            index,
            host: host.to_owned(),
            hostname: crate::sys::hostname(),
            port,
            addresses: crate::sys::ipv4_addresses(),
            cpus: crate::sys::cpus_allowed(),
            memory: mem_total(),
            service_pid: std::process::id(),
        }
    }

    /// Append the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_le_bytes());
        put_str(out, &self.host);
        put_str(out, &self.hostname);
        out.extend_from_slice(&self.port.to_le_bytes());
        out.extend_from_slice(&(self.addresses.len().min(255) as u16).to_le_bytes());
        for a in self.addresses.iter().take(255) {
            put_str(out, a);
        }
        out.extend_from_slice(&self.cpus.to_le_bytes());
        out.extend_from_slice(&self.memory.to_le_bytes());
        out.extend_from_slice(&self.service_pid.to_le_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<NodeInfo, TableError> {
        let index = r.u32()?;
        let host = r.str()?;
        let hostname = r.str()?;
        let port = r.u16()?;
        let n = r.u16()?;
        if n > 255 {
            return Err(TableError("too many addresses"));
        }
        let addresses = (0..n).map(|_| r.str()).collect::<Result<_, _>>()?;
        Ok(NodeInfo { index, host, hostname, port, addresses, cpus: r.u32()?, memory: r.u64()?, service_pid: r.u32()? })
    }

    /// Decode one record (all of `b`).
    pub fn decode(b: &[u8]) -> Result<NodeInfo, TableError> {
        let mut r = Reader(b);
        let n = NodeInfo::read(&mut r)?;
        if !r.0.is_empty() {
            return Err(TableError("trailing bytes"));
        }
        Ok(n)
    }

    /// Where its service listens, for other nodes.
    pub fn service_address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Encode a whole table.
pub fn encode_table(nodes: &[NodeInfo]) -> Vec<u8> {
    let mut out = (nodes.len() as u32).to_le_bytes().to_vec();
    for n in nodes {
        n.encode(&mut out);
    }
    out
}

/// Decode a whole table; node `i` must have index `i`.
pub fn decode_table(b: &[u8]) -> Result<Vec<NodeInfo>, TableError> {
    let mut r = Reader(b);
    let n = r.u32()?;
    if n as usize > crate::hostlist::MAX_HOSTS {
        return Err(TableError("too many nodes"));
    }
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = NodeInfo::read(&mut r)?;
        if node.index != i {
            return Err(TableError("nodes out of order"));
        }
        nodes.push(node);
    }
    if !r.0.is_empty() {
        return Err(TableError("trailing bytes"));
    }
    Ok(nodes)
}

pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The table as JSON (a list of objects), for the Python side.
pub fn table_json(nodes: &[NodeInfo]) -> String {
    let mut s = String::from("[");
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"index\":");
        let _ = write!(s, "{}", n.index);
        s.push_str(",\"host\":");
        json_str(&mut s, &n.host);
        s.push_str(",\"hostname\":");
        json_str(&mut s, &n.hostname);
        let _ = write!(s, ",\"port\":{},\"addresses\":[", n.port);
        for (j, a) in n.addresses.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            json_str(&mut s, a);
        }
        let _ = write!(s, "],\"cpus\":{},\"memory\":{},\"service_pid\":{}}}", n.cpus, n.memory, n.service_pid);
    }
    s.push(']');
    s
}

/// Total memory of this machine (`/proc/meminfo`), 0 if unknown.
pub fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_garbage_is_an_error() {
        let a = NodeInfo::local(0, "node1", 4000);
        let mut b = NodeInfo::local(1, "node2", 4001);
        b.addresses = vec!["10.1.2.3".into(), "10.9.9.9".into()];
        b.hostname = "quote\"back\\slash".into();
        let t = encode_table(&[a.clone(), b.clone()]);
        assert_eq!(decode_table(&t).unwrap(), vec![a.clone(), b.clone()]);
        let mut one = Vec::new();
        a.encode(&mut one);
        assert_eq!(NodeInfo::decode(&one).unwrap(), a);
        for cut in 0..t.len() {
            assert!(decode_table(&t[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = t.clone();
        extra.push(0);
        assert!(decode_table(&extra).is_err());
        assert!(decode_table(&encode_table(&[b.clone(), a.clone()])).is_err(), "out of order");
        let js = table_json(&[a, b]);
        assert!(js.starts_with("[{\"index\":0,\"host\":\"node1\""), "{js}");
        assert!(js.contains("quote\\\"back\\\\slash"), "{js}");
        assert!(js.contains("\"addresses\":[\"10.1.2.3\",\"10.9.9.9\"]"), "{js}");
    }

    #[test]
    fn the_local_node_is_described() {
        let n = NodeInfo::local(3, "h", 1);
        assert!(n.cpus >= 1);
        assert!(n.memory > 0);
        assert_eq!(n.service_pid, std::process::id());
        assert_eq!(n.service_address(), "h:1");
    }
}
