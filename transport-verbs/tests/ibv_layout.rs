//! The structures `ibv.rs` declares by hand against the installed
//! `<infiniband/verbs.h>`: a C program compiled here prints every size and
//! field offset the implementation relies on, and they must match.
//!
//! Needs a C compiler and rdma-core's headers (`libibverbs-dev`, which CI
//! installs). Without the headers the test fails saying so;
//! `DRAGON_SKIP_IBVERBS_LAYOUT=1` skips it.

use std::mem::{offset_of, size_of};
use std::process::Command;
use transport_verbs::ibv::{offsets, *};

const PROGRAM: &str = r#"
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stddef.h>
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t));
#define O(t, f) printf("%s.%s %zu\n", #t, #f, offsetof(struct t, f));
int main(void) {
  S(ibv_sge) O(ibv_sge, addr) O(ibv_sge, length) O(ibv_sge, lkey)
  S(ibv_send_wr) O(ibv_send_wr, wr_id) O(ibv_send_wr, next) O(ibv_send_wr, sg_list) O(ibv_send_wr, num_sge)
  O(ibv_send_wr, opcode) O(ibv_send_wr, send_flags) O(ibv_send_wr, imm_data) O(ibv_send_wr, wr.rdma.remote_addr)
  O(ibv_send_wr, wr.rdma.rkey) O(ibv_send_wr, qp_type)
  S(ibv_recv_wr) O(ibv_recv_wr, wr_id) O(ibv_recv_wr, next) O(ibv_recv_wr, sg_list) O(ibv_recv_wr, num_sge)
  S(ibv_wc) O(ibv_wc, wr_id) O(ibv_wc, status) O(ibv_wc, opcode) O(ibv_wc, vendor_err) O(ibv_wc, byte_len)
  O(ibv_wc, imm_data) O(ibv_wc, qp_num) O(ibv_wc, wc_flags)
  S(ibv_qp_cap) S(ibv_qp_init_attr) O(ibv_qp_init_attr, send_cq) O(ibv_qp_init_attr, recv_cq) O(ibv_qp_init_attr, cap)
  O(ibv_qp_init_attr, qp_type) O(ibv_qp_init_attr, sq_sig_all)
  S(ibv_global_route) O(ibv_global_route, dgid) O(ibv_global_route, flow_label) O(ibv_global_route, sgid_index)
  O(ibv_global_route, hop_limit)
  S(ibv_ah_attr) O(ibv_ah_attr, grh) O(ibv_ah_attr, dlid) O(ibv_ah_attr, is_global) O(ibv_ah_attr, port_num)
  S(ibv_qp_attr) O(ibv_qp_attr, qp_state) O(ibv_qp_attr, path_mtu) O(ibv_qp_attr, rq_psn) O(ibv_qp_attr, sq_psn)
  O(ibv_qp_attr, dest_qp_num) O(ibv_qp_attr, qp_access_flags) O(ibv_qp_attr, ah_attr) O(ibv_qp_attr, pkey_index)
  O(ibv_qp_attr, max_rd_atomic) O(ibv_qp_attr, max_dest_rd_atomic) O(ibv_qp_attr, min_rnr_timer)
  O(ibv_qp_attr, port_num) O(ibv_qp_attr, timeout) O(ibv_qp_attr, retry_cnt) O(ibv_qp_attr, rnr_retry)
  O(ibv_context, ops.poll_cq) O(ibv_context, ops.req_notify_cq) O(ibv_context, ops.post_send)
  O(ibv_context, ops.post_recv) O(ibv_qp, qp_num) O(ibv_mr, lkey) O(ibv_mr, rkey) O(ibv_comp_channel, fd)
  O(ibv_port_attr, state) O(ibv_port_attr, active_mtu) O(ibv_port_attr, gid_tbl_len) O(ibv_port_attr, lid)
  O(ibv_port_attr, link_layer) S(ibv_port_attr)
  O(ibv_device_attr, max_qp_wr) O(ibv_device_attr, max_qp_rd_atom) O(ibv_device_attr, max_qp_init_rd_atom)
  O(ibv_device_attr, phys_port_cnt) S(ibv_device_attr)
  return 0;
}
"#;

fn c_layout() -> Option<std::collections::HashMap<String, usize>> {
    let dir = test_support::TempDir::create("ibv-layout");
    let src = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    std::fs::write(&src, PROGRAM).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc).arg(&src).arg("-o").arg(&exe).output().expect("run the C compiler");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("infiniband/verbs.h") {
            return None;
        }
        panic!("{cc} failed: {err}");
    }
    let out = Command::new(&exe).output().unwrap();
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.trim_start_matches("sizeof ").to_owned(), v.parse().unwrap())
            })
            .collect(),
    )
}

#[test]
fn hand_written_structures_match_the_installed_header() {
    if std::env::var_os("DRAGON_SKIP_IBVERBS_LAYOUT").is_some() {
        return;
    }
    let c = c_layout().expect(
        "<infiniband/verbs.h> not found: install rdma-core's headers (apt install libibverbs-dev) \
         or set DRAGON_SKIP_IBVERBS_LAYOUT=1",
    );
    let mut checked = 0;
    let mut check = |name: &str, rust: usize| {
        let want = *c.get(name).unwrap_or_else(|| panic!("{name} missing from the C output"));
        assert_eq!(rust, want, "{name}: {rust} here, {want} in verbs.h");
        checked += 1;
    };
    check("ibv_sge", size_of::<IbvSge>());
    check("ibv_sge.addr", offset_of!(IbvSge, addr));
    check("ibv_sge.length", offset_of!(IbvSge, length));
    check("ibv_sge.lkey", offset_of!(IbvSge, lkey));
    check("ibv_send_wr", size_of::<IbvSendWr>());
    check("ibv_send_wr.wr_id", offset_of!(IbvSendWr, wr_id));
    check("ibv_send_wr.next", offset_of!(IbvSendWr, next));
    check("ibv_send_wr.sg_list", offset_of!(IbvSendWr, sg_list));
    check("ibv_send_wr.num_sge", offset_of!(IbvSendWr, num_sge));
    check("ibv_send_wr.opcode", offset_of!(IbvSendWr, opcode));
    check("ibv_send_wr.send_flags", offset_of!(IbvSendWr, send_flags));
    check("ibv_send_wr.imm_data", offset_of!(IbvSendWr, imm_data));
    check("ibv_send_wr.wr.rdma.remote_addr", offset_of!(IbvSendWr, remote_addr));
    check("ibv_send_wr.wr.rdma.rkey", offset_of!(IbvSendWr, rkey));
    check("ibv_send_wr.qp_type", offset_of!(IbvSendWr, _qp_type));
    check("ibv_recv_wr", size_of::<IbvRecvWr>());
    check("ibv_recv_wr.wr_id", offset_of!(IbvRecvWr, wr_id));
    check("ibv_recv_wr.next", offset_of!(IbvRecvWr, next));
    check("ibv_recv_wr.sg_list", offset_of!(IbvRecvWr, sg_list));
    check("ibv_recv_wr.num_sge", offset_of!(IbvRecvWr, num_sge));
    check("ibv_wc", size_of::<IbvWc>());
    check("ibv_wc.wr_id", offset_of!(IbvWc, wr_id));
    check("ibv_wc.status", offset_of!(IbvWc, status));
    check("ibv_wc.opcode", offset_of!(IbvWc, opcode));
    check("ibv_wc.vendor_err", offset_of!(IbvWc, vendor_err));
    check("ibv_wc.byte_len", offset_of!(IbvWc, byte_len));
    check("ibv_wc.imm_data", offset_of!(IbvWc, imm_data));
    check("ibv_wc.qp_num", offset_of!(IbvWc, qp_num));
    check("ibv_wc.wc_flags", offset_of!(IbvWc, wc_flags));
    check("ibv_qp_cap", size_of::<IbvQpCap>());
    check("ibv_qp_init_attr", size_of::<IbvQpInitAttr>());
    check("ibv_qp_init_attr.send_cq", offset_of!(IbvQpInitAttr, send_cq));
    check("ibv_qp_init_attr.recv_cq", offset_of!(IbvQpInitAttr, recv_cq));
    check("ibv_qp_init_attr.cap", offset_of!(IbvQpInitAttr, cap));
    check("ibv_qp_init_attr.qp_type", offset_of!(IbvQpInitAttr, qp_type));
    check("ibv_qp_init_attr.sq_sig_all", offset_of!(IbvQpInitAttr, sq_sig_all));
    check("ibv_global_route", size_of::<IbvGlobalRoute>());
    check("ibv_global_route.dgid", offset_of!(IbvGlobalRoute, dgid));
    check("ibv_global_route.flow_label", offset_of!(IbvGlobalRoute, flow_label));
    check("ibv_global_route.sgid_index", offset_of!(IbvGlobalRoute, sgid_index));
    check("ibv_global_route.hop_limit", offset_of!(IbvGlobalRoute, hop_limit));
    check("ibv_ah_attr", size_of::<IbvAhAttr>());
    check("ibv_ah_attr.grh", offset_of!(IbvAhAttr, grh));
    check("ibv_ah_attr.dlid", offset_of!(IbvAhAttr, dlid));
    check("ibv_ah_attr.is_global", offset_of!(IbvAhAttr, is_global));
    check("ibv_ah_attr.port_num", offset_of!(IbvAhAttr, port_num));
    check("ibv_qp_attr", size_of::<IbvQpAttr>());
    check("ibv_qp_attr.qp_state", offset_of!(IbvQpAttr, qp_state));
    check("ibv_qp_attr.path_mtu", offset_of!(IbvQpAttr, path_mtu));
    check("ibv_qp_attr.rq_psn", offset_of!(IbvQpAttr, rq_psn));
    check("ibv_qp_attr.sq_psn", offset_of!(IbvQpAttr, sq_psn));
    check("ibv_qp_attr.dest_qp_num", offset_of!(IbvQpAttr, dest_qp_num));
    check("ibv_qp_attr.qp_access_flags", offset_of!(IbvQpAttr, qp_access_flags));
    check("ibv_qp_attr.ah_attr", offset_of!(IbvQpAttr, ah_attr));
    check("ibv_qp_attr.pkey_index", offset_of!(IbvQpAttr, pkey_index));
    check("ibv_qp_attr.max_rd_atomic", offset_of!(IbvQpAttr, max_rd_atomic));
    check("ibv_qp_attr.max_dest_rd_atomic", offset_of!(IbvQpAttr, max_dest_rd_atomic));
    check("ibv_qp_attr.min_rnr_timer", offset_of!(IbvQpAttr, min_rnr_timer));
    check("ibv_qp_attr.port_num", offset_of!(IbvQpAttr, port_num));
    check("ibv_qp_attr.timeout", offset_of!(IbvQpAttr, timeout));
    check("ibv_qp_attr.retry_cnt", offset_of!(IbvQpAttr, retry_cnt));
    check("ibv_qp_attr.rnr_retry", offset_of!(IbvQpAttr, rnr_retry));
    check("ibv_context.ops.poll_cq", offsets::CTX_POLL_CQ);
    check("ibv_context.ops.req_notify_cq", offsets::CTX_REQ_NOTIFY_CQ);
    check("ibv_context.ops.post_send", offsets::CTX_POST_SEND);
    check("ibv_context.ops.post_recv", offsets::CTX_POST_RECV);
    check("ibv_qp.qp_num", offsets::QP_NUM);
    check("ibv_mr.lkey", offsets::MR_LKEY);
    check("ibv_mr.rkey", offsets::MR_RKEY);
    check("ibv_comp_channel.fd", offsets::CHANNEL_FD);
    check("ibv_port_attr.state", offsets::PORT_STATE);
    check("ibv_port_attr.active_mtu", offsets::PORT_ACTIVE_MTU);
    check("ibv_port_attr.gid_tbl_len", offsets::PORT_GID_TBL_LEN);
    check("ibv_port_attr.lid", offsets::PORT_LID);
    check("ibv_port_attr.link_layer", offsets::PORT_LINK_LAYER);
    check("ibv_port_attr", offsets::PORT_ATTR_SIZE);
    check("ibv_device_attr.max_qp_wr", offsets::DEV_MAX_QP_WR);
    check("ibv_device_attr.max_qp_rd_atom", offsets::DEV_MAX_QP_RD_ATOM);
    check("ibv_device_attr.max_qp_init_rd_atom", offsets::DEV_MAX_QP_INIT_RD_ATOM);
    check("ibv_device_attr.phys_port_cnt", offsets::DEV_PHYS_PORT_CNT);
    check("ibv_device_attr", offsets::DEV_ATTR_SIZE);
    assert_eq!(checked, c.len(), "every line of the C program was checked");
}
