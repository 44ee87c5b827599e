// The GEMM core for adapters whose workgroup memory is ordinary memory
// (CPU adapters such as lavapipe), appended after gemm.wgsl when the
// adapter has subgroups of at least TEAM invocations (the SUBGROUP
// feature; naga takes the builtins without an `enable subgroups`).
//
// On such an adapter a subgroup is one SIMD register's lanes and every
// storage or workgroup-memory access is a loop over those lanes, so the
// cost of a GEMM is its load count. Staging tiles in workgroup memory
// adds copies and barriers and saves nothing; what saves loads is
// registers and lanes sharing values. A team of TEAM invocations (one
// workgroup, inside one subgroup) computes 16 rows (32 when `tall`) x
// TEAM*4 columns: per k each lane loads two (four) rows' A values and
// its own four B values, and the team broadcasts the A values, so 6 loads
// feed 64 FMAs per lane (8 feed 128) where the tiled kernel spends 8
// workgroup-memory loads on 16, plus filling the tiles. The tall team
// keeps more accumulators than registers and still wins wherever its
// rows are used (M > 16); the wide one (`gemm_team_wide`: eight columns
// per lane, 12 loads feed 256 FMAs) is for large matmuls. Rows and columns past the
// edge load clamped (valid) addresses and are never stored. Written out
// by hand, not as loops over arrays: lavapipe keeps loop-indexed arrays in
// memory (2x slower measured).
//
// Entry points by mode (the including family's constant: matmul has only
// 0; conv2d's forward, grad_input and grad_weight are 0, 1 and 2) and
// shape, one team per workgroup. `mode` and `tall` are constants per
// entry point, so compilers fold them.
//
// Params as `gemm_tiled`, except [3] column groups (TEAM*4 columns) along
// N, [4] groups per batch (row blocks x column groups), [12] workgroups
// (groups times splits).

const TEAM: u32 = 8u;

/// Where workgroup `g`'s team works: (split, batch, first row, this
/// lane's first column) for teams of `rows` rows and lanes of `cols`
/// columns.
fn team_at(g: u32, lid: u32, rows: u32, cols: u32) -> vec4<u32> {
    let per_batch = pu(4u);
    let grid = per_batch * pu(5u);
    let t = g % per_batch;
    return vec4<u32>(g / grid, (g % grid) / per_batch, (t / pu(3u)) * rows, ((t % pu(3u)) * TEAM + lid) * cols);
}

fn gemm_team(mode: u32, tall: bool, g: u32, lid: u32, lane: u32) {
    if g >= pu(12u) {
        return;
    }
    let m = pu(0u);
    let n = pu(1u);
    let at = team_at(g, lid, select(2u, 4u, tall) * TEAM, 4u);
    let split = at.x;
    let batch = at.y;
    let i0 = at.z;
    let j0 = at.w;
    let mine0 = row_ctx(mode, batch, min(i0 + lane, m - 1u));
    let mine1 = row_ctx(mode, batch, min(i0 + TEAM + lane, m - 1u));
    let mine2 = row_ctx(mode, batch, min(i0 + 2u * TEAM + lane, m - 1u));
    let mine3 = row_ctx(mode, batch, min(i0 + 3u * TEAM + lane, m - 1u));
    let c0 = col_ctx(mode, batch, min(j0, n - 1u));
    let c1 = col_ctx(mode, batch, min(j0 + 1u, n - 1u));
    let c2 = col_ctx(mode, batch, min(j0 + 2u, n - 1u));
    let c3 = col_ctx(mode, batch, min(j0 + 3u, n - 1u));
    let kbeg = split * pu(14u);
    let kend = min(pu(2u), kbeg + pu(14u));
    let radix = k_radix(mode);
    let one = k_split(1u, radix);
    var kc = k_split(kbeg, radix);
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    var acc4 = vec4<f32>();
    var acc5 = vec4<f32>();
    var acc6 = vec4<f32>();
    var acc7 = vec4<f32>();
    var acc8 = vec4<f32>();
    var acc9 = vec4<f32>();
    var acc10 = vec4<f32>();
    var acc11 = vec4<f32>();
    var acc12 = vec4<f32>();
    var acc13 = vec4<f32>();
    var acc14 = vec4<f32>();
    var acc15 = vec4<f32>();
    var acc16 = vec4<f32>();
    var acc17 = vec4<f32>();
    var acc18 = vec4<f32>();
    var acc19 = vec4<f32>();
    var acc20 = vec4<f32>();
    var acc21 = vec4<f32>();
    var acc22 = vec4<f32>();
    var acc23 = vec4<f32>();
    var acc24 = vec4<f32>();
    var acc25 = vec4<f32>();
    var acc26 = vec4<f32>();
    var acc27 = vec4<f32>();
    var acc28 = vec4<f32>();
    var acc29 = vec4<f32>();
    var acc30 = vec4<f32>();
    var acc31 = vec4<f32>();
    for (var k = kbeg; k < kend; k++) {
        let b = vec4<f32>(
            load_b(mode, batch, kc, c0),
            load_b(mode, batch, kc, c1),
            load_b(mode, batch, kc, c2),
            load_b(mode, batch, kc, c3),
        );
        let a0 = load_a(mode, batch, mine0, kc);
        let a1 = load_a(mode, batch, mine1, kc);
        acc0 = fma(vec4<f32>(subgroupBroadcast(a0, 0u)), b, acc0);
        acc1 = fma(vec4<f32>(subgroupBroadcast(a0, 1u)), b, acc1);
        acc2 = fma(vec4<f32>(subgroupBroadcast(a0, 2u)), b, acc2);
        acc3 = fma(vec4<f32>(subgroupBroadcast(a0, 3u)), b, acc3);
        acc4 = fma(vec4<f32>(subgroupBroadcast(a0, 4u)), b, acc4);
        acc5 = fma(vec4<f32>(subgroupBroadcast(a0, 5u)), b, acc5);
        acc6 = fma(vec4<f32>(subgroupBroadcast(a0, 6u)), b, acc6);
        acc7 = fma(vec4<f32>(subgroupBroadcast(a0, 7u)), b, acc7);
        acc8 = fma(vec4<f32>(subgroupBroadcast(a1, 0u)), b, acc8);
        acc9 = fma(vec4<f32>(subgroupBroadcast(a1, 1u)), b, acc9);
        acc10 = fma(vec4<f32>(subgroupBroadcast(a1, 2u)), b, acc10);
        acc11 = fma(vec4<f32>(subgroupBroadcast(a1, 3u)), b, acc11);
        acc12 = fma(vec4<f32>(subgroupBroadcast(a1, 4u)), b, acc12);
        acc13 = fma(vec4<f32>(subgroupBroadcast(a1, 5u)), b, acc13);
        acc14 = fma(vec4<f32>(subgroupBroadcast(a1, 6u)), b, acc14);
        acc15 = fma(vec4<f32>(subgroupBroadcast(a1, 7u)), b, acc15);
        if tall {
            let a2 = load_a(mode, batch, mine2, kc);
            let a3 = load_a(mode, batch, mine3, kc);
            acc16 = fma(vec4<f32>(subgroupBroadcast(a2, 0u)), b, acc16);
            acc17 = fma(vec4<f32>(subgroupBroadcast(a2, 1u)), b, acc17);
            acc18 = fma(vec4<f32>(subgroupBroadcast(a2, 2u)), b, acc18);
            acc19 = fma(vec4<f32>(subgroupBroadcast(a2, 3u)), b, acc19);
            acc20 = fma(vec4<f32>(subgroupBroadcast(a2, 4u)), b, acc20);
            acc21 = fma(vec4<f32>(subgroupBroadcast(a2, 5u)), b, acc21);
            acc22 = fma(vec4<f32>(subgroupBroadcast(a2, 6u)), b, acc22);
            acc23 = fma(vec4<f32>(subgroupBroadcast(a2, 7u)), b, acc23);
            acc24 = fma(vec4<f32>(subgroupBroadcast(a3, 0u)), b, acc24);
            acc25 = fma(vec4<f32>(subgroupBroadcast(a3, 1u)), b, acc25);
            acc26 = fma(vec4<f32>(subgroupBroadcast(a3, 2u)), b, acc26);
            acc27 = fma(vec4<f32>(subgroupBroadcast(a3, 3u)), b, acc27);
            acc28 = fma(vec4<f32>(subgroupBroadcast(a3, 4u)), b, acc28);
            acc29 = fma(vec4<f32>(subgroupBroadcast(a3, 5u)), b, acc29);
            acc30 = fma(vec4<f32>(subgroupBroadcast(a3, 6u)), b, acc30);
            acc31 = fma(vec4<f32>(subgroupBroadcast(a3, 7u)), b, acc31);
        }
        kc = k_add(kc, one, radix);
    }
    team_row(mode, split, batch, i0 + 0u, j0, c0, c1, c2, c3, acc0);
    team_row(mode, split, batch, i0 + 1u, j0, c0, c1, c2, c3, acc1);
    team_row(mode, split, batch, i0 + 2u, j0, c0, c1, c2, c3, acc2);
    team_row(mode, split, batch, i0 + 3u, j0, c0, c1, c2, c3, acc3);
    team_row(mode, split, batch, i0 + 4u, j0, c0, c1, c2, c3, acc4);
    team_row(mode, split, batch, i0 + 5u, j0, c0, c1, c2, c3, acc5);
    team_row(mode, split, batch, i0 + 6u, j0, c0, c1, c2, c3, acc6);
    team_row(mode, split, batch, i0 + 7u, j0, c0, c1, c2, c3, acc7);
    team_row(mode, split, batch, i0 + 8u, j0, c0, c1, c2, c3, acc8);
    team_row(mode, split, batch, i0 + 9u, j0, c0, c1, c2, c3, acc9);
    team_row(mode, split, batch, i0 + 10u, j0, c0, c1, c2, c3, acc10);
    team_row(mode, split, batch, i0 + 11u, j0, c0, c1, c2, c3, acc11);
    team_row(mode, split, batch, i0 + 12u, j0, c0, c1, c2, c3, acc12);
    team_row(mode, split, batch, i0 + 13u, j0, c0, c1, c2, c3, acc13);
    team_row(mode, split, batch, i0 + 14u, j0, c0, c1, c2, c3, acc14);
    team_row(mode, split, batch, i0 + 15u, j0, c0, c1, c2, c3, acc15);
    if tall {
        team_row(mode, split, batch, i0 + 16u, j0, c0, c1, c2, c3, acc16);
        team_row(mode, split, batch, i0 + 17u, j0, c0, c1, c2, c3, acc17);
        team_row(mode, split, batch, i0 + 18u, j0, c0, c1, c2, c3, acc18);
        team_row(mode, split, batch, i0 + 19u, j0, c0, c1, c2, c3, acc19);
        team_row(mode, split, batch, i0 + 20u, j0, c0, c1, c2, c3, acc20);
        team_row(mode, split, batch, i0 + 21u, j0, c0, c1, c2, c3, acc21);
        team_row(mode, split, batch, i0 + 22u, j0, c0, c1, c2, c3, acc22);
        team_row(mode, split, batch, i0 + 23u, j0, c0, c1, c2, c3, acc23);
        team_row(mode, split, batch, i0 + 24u, j0, c0, c1, c2, c3, acc24);
        team_row(mode, split, batch, i0 + 25u, j0, c0, c1, c2, c3, acc25);
        team_row(mode, split, batch, i0 + 26u, j0, c0, c1, c2, c3, acc26);
        team_row(mode, split, batch, i0 + 27u, j0, c0, c1, c2, c3, acc27);
        team_row(mode, split, batch, i0 + 28u, j0, c0, c1, c2, c3, acc28);
        team_row(mode, split, batch, i0 + 29u, j0, c0, c1, c2, c3, acc29);
        team_row(mode, split, batch, i0 + 30u, j0, c0, c1, c2, c3, acc30);
        team_row(mode, split, batch, i0 + 31u, j0, c0, c1, c2, c3, acc31);

    }
}

/// The wide team: 32 rows x TEAM*8 columns, each lane two vec4 column
/// groups, for large matmuls. A function of its own: sharing one with
/// `gemm_team` behind a flag doubled lavapipe's compile time of every
/// team pipeline.
fn gemm_team_wide(mode: u32, g: u32, lid: u32, lane: u32) {
    if g >= pu(12u) {
        return;
    }
    let m = pu(0u);
    let n = pu(1u);
    let at = team_at(g, lid, 4u * TEAM, 8u);
    let split = at.x;
    let batch = at.y;
    let i0 = at.z;
    let j0 = at.w;
    let mine0 = row_ctx(mode, batch, min(i0 + lane, m - 1u));
    let mine1 = row_ctx(mode, batch, min(i0 + TEAM + lane, m - 1u));
    let mine2 = row_ctx(mode, batch, min(i0 + 2u * TEAM + lane, m - 1u));
    let mine3 = row_ctx(mode, batch, min(i0 + 3u * TEAM + lane, m - 1u));
    let c0 = col_ctx(mode, batch, min(j0, n - 1u));
    let c1 = col_ctx(mode, batch, min(j0 + 1u, n - 1u));
    let c2 = col_ctx(mode, batch, min(j0 + 2u, n - 1u));
    let c3 = col_ctx(mode, batch, min(j0 + 3u, n - 1u));
    let c4 = col_ctx(mode, batch, min(j0 + 4u, n - 1u));
    let c5 = col_ctx(mode, batch, min(j0 + 5u, n - 1u));
    let c6 = col_ctx(mode, batch, min(j0 + 6u, n - 1u));
    let c7 = col_ctx(mode, batch, min(j0 + 7u, n - 1u));
    let kbeg = split * pu(14u);
    let kend = min(pu(2u), kbeg + pu(14u));
    let radix = k_radix(mode);
    let one = k_split(1u, radix);
    var kc = k_split(kbeg, radix);
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    var acc4 = vec4<f32>();
    var acc5 = vec4<f32>();
    var acc6 = vec4<f32>();
    var acc7 = vec4<f32>();
    var acc8 = vec4<f32>();
    var acc9 = vec4<f32>();
    var acc10 = vec4<f32>();
    var acc11 = vec4<f32>();
    var acc12 = vec4<f32>();
    var acc13 = vec4<f32>();
    var acc14 = vec4<f32>();
    var acc15 = vec4<f32>();
    var acc16 = vec4<f32>();
    var acc17 = vec4<f32>();
    var acc18 = vec4<f32>();
    var acc19 = vec4<f32>();
    var acc20 = vec4<f32>();
    var acc21 = vec4<f32>();
    var acc22 = vec4<f32>();
    var acc23 = vec4<f32>();
    var acc24 = vec4<f32>();
    var acc25 = vec4<f32>();
    var acc26 = vec4<f32>();
    var acc27 = vec4<f32>();
    var acc28 = vec4<f32>();
    var acc29 = vec4<f32>();
    var acc30 = vec4<f32>();
    var acc31 = vec4<f32>();
    var wac0 = vec4<f32>();
    var wac1 = vec4<f32>();
    var wac2 = vec4<f32>();
    var wac3 = vec4<f32>();
    var wac4 = vec4<f32>();
    var wac5 = vec4<f32>();
    var wac6 = vec4<f32>();
    var wac7 = vec4<f32>();
    var wac8 = vec4<f32>();
    var wac9 = vec4<f32>();
    var wac10 = vec4<f32>();
    var wac11 = vec4<f32>();
    var wac12 = vec4<f32>();
    var wac13 = vec4<f32>();
    var wac14 = vec4<f32>();
    var wac15 = vec4<f32>();
    var wac16 = vec4<f32>();
    var wac17 = vec4<f32>();
    var wac18 = vec4<f32>();
    var wac19 = vec4<f32>();
    var wac20 = vec4<f32>();
    var wac21 = vec4<f32>();
    var wac22 = vec4<f32>();
    var wac23 = vec4<f32>();
    var wac24 = vec4<f32>();
    var wac25 = vec4<f32>();
    var wac26 = vec4<f32>();
    var wac27 = vec4<f32>();
    var wac28 = vec4<f32>();
    var wac29 = vec4<f32>();
    var wac30 = vec4<f32>();
    var wac31 = vec4<f32>();
    for (var k = kbeg; k < kend; k++) {
        let b = vec4<f32>(
            load_b(mode, batch, kc, c0),
            load_b(mode, batch, kc, c1),
            load_b(mode, batch, kc, c2),
            load_b(mode, batch, kc, c3),
        );
        let a0 = load_a(mode, batch, mine0, kc);
        let a1 = load_a(mode, batch, mine1, kc);
        acc0 = fma(vec4<f32>(subgroupBroadcast(a0, 0u)), b, acc0);
        acc1 = fma(vec4<f32>(subgroupBroadcast(a0, 1u)), b, acc1);
        acc2 = fma(vec4<f32>(subgroupBroadcast(a0, 2u)), b, acc2);
        acc3 = fma(vec4<f32>(subgroupBroadcast(a0, 3u)), b, acc3);
        acc4 = fma(vec4<f32>(subgroupBroadcast(a0, 4u)), b, acc4);
        acc5 = fma(vec4<f32>(subgroupBroadcast(a0, 5u)), b, acc5);
        acc6 = fma(vec4<f32>(subgroupBroadcast(a0, 6u)), b, acc6);
        acc7 = fma(vec4<f32>(subgroupBroadcast(a0, 7u)), b, acc7);
        acc8 = fma(vec4<f32>(subgroupBroadcast(a1, 0u)), b, acc8);
        acc9 = fma(vec4<f32>(subgroupBroadcast(a1, 1u)), b, acc9);
        acc10 = fma(vec4<f32>(subgroupBroadcast(a1, 2u)), b, acc10);
        acc11 = fma(vec4<f32>(subgroupBroadcast(a1, 3u)), b, acc11);
        acc12 = fma(vec4<f32>(subgroupBroadcast(a1, 4u)), b, acc12);
        acc13 = fma(vec4<f32>(subgroupBroadcast(a1, 5u)), b, acc13);
        acc14 = fma(vec4<f32>(subgroupBroadcast(a1, 6u)), b, acc14);
        acc15 = fma(vec4<f32>(subgroupBroadcast(a1, 7u)), b, acc15);
        let a2 = load_a(mode, batch, mine2, kc);
        let a3 = load_a(mode, batch, mine3, kc);
        acc16 = fma(vec4<f32>(subgroupBroadcast(a2, 0u)), b, acc16);
        acc17 = fma(vec4<f32>(subgroupBroadcast(a2, 1u)), b, acc17);
        acc18 = fma(vec4<f32>(subgroupBroadcast(a2, 2u)), b, acc18);
        acc19 = fma(vec4<f32>(subgroupBroadcast(a2, 3u)), b, acc19);
        acc20 = fma(vec4<f32>(subgroupBroadcast(a2, 4u)), b, acc20);
        acc21 = fma(vec4<f32>(subgroupBroadcast(a2, 5u)), b, acc21);
        acc22 = fma(vec4<f32>(subgroupBroadcast(a2, 6u)), b, acc22);
        acc23 = fma(vec4<f32>(subgroupBroadcast(a2, 7u)), b, acc23);
        acc24 = fma(vec4<f32>(subgroupBroadcast(a3, 0u)), b, acc24);
        acc25 = fma(vec4<f32>(subgroupBroadcast(a3, 1u)), b, acc25);
        acc26 = fma(vec4<f32>(subgroupBroadcast(a3, 2u)), b, acc26);
        acc27 = fma(vec4<f32>(subgroupBroadcast(a3, 3u)), b, acc27);
        acc28 = fma(vec4<f32>(subgroupBroadcast(a3, 4u)), b, acc28);
        acc29 = fma(vec4<f32>(subgroupBroadcast(a3, 5u)), b, acc29);
        acc30 = fma(vec4<f32>(subgroupBroadcast(a3, 6u)), b, acc30);
        acc31 = fma(vec4<f32>(subgroupBroadcast(a3, 7u)), b, acc31);
        let b2 = vec4<f32>(
            load_b(mode, batch, kc, c4),
            load_b(mode, batch, kc, c5),
            load_b(mode, batch, kc, c6),
            load_b(mode, batch, kc, c7),
        );
        wac0 = fma(vec4<f32>(subgroupBroadcast(a0, 0u)), b2, wac0);
        wac1 = fma(vec4<f32>(subgroupBroadcast(a0, 1u)), b2, wac1);
        wac2 = fma(vec4<f32>(subgroupBroadcast(a0, 2u)), b2, wac2);
        wac3 = fma(vec4<f32>(subgroupBroadcast(a0, 3u)), b2, wac3);
        wac4 = fma(vec4<f32>(subgroupBroadcast(a0, 4u)), b2, wac4);
        wac5 = fma(vec4<f32>(subgroupBroadcast(a0, 5u)), b2, wac5);
        wac6 = fma(vec4<f32>(subgroupBroadcast(a0, 6u)), b2, wac6);
        wac7 = fma(vec4<f32>(subgroupBroadcast(a0, 7u)), b2, wac7);
        wac8 = fma(vec4<f32>(subgroupBroadcast(a1, 0u)), b2, wac8);
        wac9 = fma(vec4<f32>(subgroupBroadcast(a1, 1u)), b2, wac9);
        wac10 = fma(vec4<f32>(subgroupBroadcast(a1, 2u)), b2, wac10);
        wac11 = fma(vec4<f32>(subgroupBroadcast(a1, 3u)), b2, wac11);
        wac12 = fma(vec4<f32>(subgroupBroadcast(a1, 4u)), b2, wac12);
        wac13 = fma(vec4<f32>(subgroupBroadcast(a1, 5u)), b2, wac13);
        wac14 = fma(vec4<f32>(subgroupBroadcast(a1, 6u)), b2, wac14);
        wac15 = fma(vec4<f32>(subgroupBroadcast(a1, 7u)), b2, wac15);
        wac16 = fma(vec4<f32>(subgroupBroadcast(a2, 0u)), b2, wac16);
        wac17 = fma(vec4<f32>(subgroupBroadcast(a2, 1u)), b2, wac17);
        wac18 = fma(vec4<f32>(subgroupBroadcast(a2, 2u)), b2, wac18);
        wac19 = fma(vec4<f32>(subgroupBroadcast(a2, 3u)), b2, wac19);
        wac20 = fma(vec4<f32>(subgroupBroadcast(a2, 4u)), b2, wac20);
        wac21 = fma(vec4<f32>(subgroupBroadcast(a2, 5u)), b2, wac21);
        wac22 = fma(vec4<f32>(subgroupBroadcast(a2, 6u)), b2, wac22);
        wac23 = fma(vec4<f32>(subgroupBroadcast(a2, 7u)), b2, wac23);
        wac24 = fma(vec4<f32>(subgroupBroadcast(a3, 0u)), b2, wac24);
        wac25 = fma(vec4<f32>(subgroupBroadcast(a3, 1u)), b2, wac25);
        wac26 = fma(vec4<f32>(subgroupBroadcast(a3, 2u)), b2, wac26);
        wac27 = fma(vec4<f32>(subgroupBroadcast(a3, 3u)), b2, wac27);
        wac28 = fma(vec4<f32>(subgroupBroadcast(a3, 4u)), b2, wac28);
        wac29 = fma(vec4<f32>(subgroupBroadcast(a3, 5u)), b2, wac29);
        wac30 = fma(vec4<f32>(subgroupBroadcast(a3, 6u)), b2, wac30);
        wac31 = fma(vec4<f32>(subgroupBroadcast(a3, 7u)), b2, wac31);
        kc = k_add(kc, one, radix);
    }
    team_row(mode, split, batch, i0 + 0u, j0, c0, c1, c2, c3, acc0);
    team_row(mode, split, batch, i0 + 1u, j0, c0, c1, c2, c3, acc1);
    team_row(mode, split, batch, i0 + 2u, j0, c0, c1, c2, c3, acc2);
    team_row(mode, split, batch, i0 + 3u, j0, c0, c1, c2, c3, acc3);
    team_row(mode, split, batch, i0 + 4u, j0, c0, c1, c2, c3, acc4);
    team_row(mode, split, batch, i0 + 5u, j0, c0, c1, c2, c3, acc5);
    team_row(mode, split, batch, i0 + 6u, j0, c0, c1, c2, c3, acc6);
    team_row(mode, split, batch, i0 + 7u, j0, c0, c1, c2, c3, acc7);
    team_row(mode, split, batch, i0 + 8u, j0, c0, c1, c2, c3, acc8);
    team_row(mode, split, batch, i0 + 9u, j0, c0, c1, c2, c3, acc9);
    team_row(mode, split, batch, i0 + 10u, j0, c0, c1, c2, c3, acc10);
    team_row(mode, split, batch, i0 + 11u, j0, c0, c1, c2, c3, acc11);
    team_row(mode, split, batch, i0 + 12u, j0, c0, c1, c2, c3, acc12);
    team_row(mode, split, batch, i0 + 13u, j0, c0, c1, c2, c3, acc13);
    team_row(mode, split, batch, i0 + 14u, j0, c0, c1, c2, c3, acc14);
    team_row(mode, split, batch, i0 + 15u, j0, c0, c1, c2, c3, acc15);
    team_row(mode, split, batch, i0 + 16u, j0, c0, c1, c2, c3, acc16);
    team_row(mode, split, batch, i0 + 17u, j0, c0, c1, c2, c3, acc17);
    team_row(mode, split, batch, i0 + 18u, j0, c0, c1, c2, c3, acc18);
    team_row(mode, split, batch, i0 + 19u, j0, c0, c1, c2, c3, acc19);
    team_row(mode, split, batch, i0 + 20u, j0, c0, c1, c2, c3, acc20);
    team_row(mode, split, batch, i0 + 21u, j0, c0, c1, c2, c3, acc21);
    team_row(mode, split, batch, i0 + 22u, j0, c0, c1, c2, c3, acc22);
    team_row(mode, split, batch, i0 + 23u, j0, c0, c1, c2, c3, acc23);
    team_row(mode, split, batch, i0 + 24u, j0, c0, c1, c2, c3, acc24);
    team_row(mode, split, batch, i0 + 25u, j0, c0, c1, c2, c3, acc25);
    team_row(mode, split, batch, i0 + 26u, j0, c0, c1, c2, c3, acc26);
    team_row(mode, split, batch, i0 + 27u, j0, c0, c1, c2, c3, acc27);
    team_row(mode, split, batch, i0 + 28u, j0, c0, c1, c2, c3, acc28);
    team_row(mode, split, batch, i0 + 29u, j0, c0, c1, c2, c3, acc29);
    team_row(mode, split, batch, i0 + 30u, j0, c0, c1, c2, c3, acc30);
    team_row(mode, split, batch, i0 + 31u, j0, c0, c1, c2, c3, acc31);

    team_row(mode, split, batch, i0 + 0u, j0 + 4u, c4, c5, c6, c7, wac0);
    team_row(mode, split, batch, i0 + 1u, j0 + 4u, c4, c5, c6, c7, wac1);
    team_row(mode, split, batch, i0 + 2u, j0 + 4u, c4, c5, c6, c7, wac2);
    team_row(mode, split, batch, i0 + 3u, j0 + 4u, c4, c5, c6, c7, wac3);
    team_row(mode, split, batch, i0 + 4u, j0 + 4u, c4, c5, c6, c7, wac4);
    team_row(mode, split, batch, i0 + 5u, j0 + 4u, c4, c5, c6, c7, wac5);
    team_row(mode, split, batch, i0 + 6u, j0 + 4u, c4, c5, c6, c7, wac6);
    team_row(mode, split, batch, i0 + 7u, j0 + 4u, c4, c5, c6, c7, wac7);
    team_row(mode, split, batch, i0 + 8u, j0 + 4u, c4, c5, c6, c7, wac8);
    team_row(mode, split, batch, i0 + 9u, j0 + 4u, c4, c5, c6, c7, wac9);
    team_row(mode, split, batch, i0 + 10u, j0 + 4u, c4, c5, c6, c7, wac10);
    team_row(mode, split, batch, i0 + 11u, j0 + 4u, c4, c5, c6, c7, wac11);
    team_row(mode, split, batch, i0 + 12u, j0 + 4u, c4, c5, c6, c7, wac12);
    team_row(mode, split, batch, i0 + 13u, j0 + 4u, c4, c5, c6, c7, wac13);
    team_row(mode, split, batch, i0 + 14u, j0 + 4u, c4, c5, c6, c7, wac14);
    team_row(mode, split, batch, i0 + 15u, j0 + 4u, c4, c5, c6, c7, wac15);
    team_row(mode, split, batch, i0 + 16u, j0 + 4u, c4, c5, c6, c7, wac16);
    team_row(mode, split, batch, i0 + 17u, j0 + 4u, c4, c5, c6, c7, wac17);
    team_row(mode, split, batch, i0 + 18u, j0 + 4u, c4, c5, c6, c7, wac18);
    team_row(mode, split, batch, i0 + 19u, j0 + 4u, c4, c5, c6, c7, wac19);
    team_row(mode, split, batch, i0 + 20u, j0 + 4u, c4, c5, c6, c7, wac20);
    team_row(mode, split, batch, i0 + 21u, j0 + 4u, c4, c5, c6, c7, wac21);
    team_row(mode, split, batch, i0 + 22u, j0 + 4u, c4, c5, c6, c7, wac22);
    team_row(mode, split, batch, i0 + 23u, j0 + 4u, c4, c5, c6, c7, wac23);
    team_row(mode, split, batch, i0 + 24u, j0 + 4u, c4, c5, c6, c7, wac24);
    team_row(mode, split, batch, i0 + 25u, j0 + 4u, c4, c5, c6, c7, wac25);
    team_row(mode, split, batch, i0 + 26u, j0 + 4u, c4, c5, c6, c7, wac26);
    team_row(mode, split, batch, i0 + 27u, j0 + 4u, c4, c5, c6, c7, wac27);
    team_row(mode, split, batch, i0 + 28u, j0 + 4u, c4, c5, c6, c7, wac28);
    team_row(mode, split, batch, i0 + 29u, j0 + 4u, c4, c5, c6, c7, wac29);
    team_row(mode, split, batch, i0 + 30u, j0 + 4u, c4, c5, c6, c7, wac30);
    team_row(mode, split, batch, i0 + 31u, j0 + 4u, c4, c5, c6, c7, wac31);
}

/// Store row i of a team's block (nothing past the edges): the epilogue,
/// or the raw partial sum when K is split.
fn team_row(mode: u32, split: u32, batch: u32, i: u32, j0: u32,
            c0: vec4<i32>, c1: vec4<i32>, c2: vec4<i32>, c3: vec4<i32>, acc: vec4<f32>) {
    let m = pu(0u);
    let n = pu(1u);
    if i >= m || j0 >= n {
        return;
    }
    let live = min(n - j0, 4u);
    if pu(13u) > 1u {
        let at = pu(15u) + ((split * pu(5u) + batch) * m + i) * n + j0;
        for (var c = 0u; c < live; c++) {
            st(at + c, acc[c]);
        }
        return;
    }
    let row = row_ctx(mode, batch, i);
    store_c(mode, batch, row, c0, epilogue(i, j0, acc.x));
    if live > 1u {
        store_c(mode, batch, row, c1, epilogue(i, j0 + 1u, acc.y));
    }
    if live > 2u {
        store_c(mode, batch, row, c2, epilogue(i, j0 + 2u, acc.z));
    }
    if live > 3u {
        store_c(mode, batch, row, c3, epilogue(i, j0 + 3u, acc.w));
    }
}

@compute @workgroup_size(8)
fn gemm_direct_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(0u, false, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(1u, false, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(2u, false, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_tall_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(0u, true, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_tall_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(1u, true, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_tall_2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team(2u, true, group_id(wid, nwg), lid, lane);
}

@compute @workgroup_size(8)
fn gemm_direct_wide_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32) {
    gemm_team_wide(0u, group_id(wid, nwg), lid, lane);
}
