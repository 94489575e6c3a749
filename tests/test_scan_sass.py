"""The scan kernels as compiled for an H100 (sm_90), on any machine: ptxas and cuobjdump ship with
Triton, so the CPU suite checks what the GPU timings rest on (docs/benchmarks.md, "The
selective-scan kernels"), in the SASS of the default launch at tiny's pretraining shape (B's and
C's rows a state a lane) and of the launch that loads them whole into every lane."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scan_sass"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_with_whole_rows_the_forward_loads_b_and_c_as_16_byte_vectors(compiled):
    sass, flags = compiled["forward_whole_rows"]["sass"], compiled["forward_whole_rows"]["flags"]
    assert flags["BD"] == 32 and flags["LANE"]  # a channel's 16 states in one thread
    # per step: B and C, 16 bf16 each, as two 16-byte loads each; u, delta and z one element a thread
    steps = 2 * flags["T"]  # the first tile before the loop, and the loop's
    assert sass.get("LDG.E.128", 0) == 4 * steps and sass.get("LDG.E.U16", 0) == 3 * steps
    assert not any(op.startswith(("STL", "LDL")) for op in sass)  # no register spills


def test_the_backward_sums_db_and_dc_by_the_reduce_scatter_without_shared_memory(compiled):
    for key in ("backward", "backward_whole_rows"):
        sass, flags = compiled[key]["sass"], compiled[key]["flags"]
        assert flags["SCATTER"] and flags["BD"] == 32 and flags["LANE"]
        steps = flags["T"]
        # one atomic add a lane a step; after the walk, a lane's sums for dA (its 16 states), dD and d delta_bias
        assert sum(v for k, v in sass.items() if k.startswith("RED")) == steps + 16 + 2, key
        # no layout moves through shared memory, no spills
        assert not any(op.startswith(("LDS", "STS", "BAR")) for op in sass), key
        assert not any(op.startswith(("STL", "LDL")) for op in sass), key
    # with whole rows every shuffle is the reduce-scatter's: 31 a step of the reverse walk's tile
    sass = compiled["backward_whole_rows"]["sass"]
    assert sum(v for k, v in sass.items() if k.startswith("SHFL")) == sass.get("SHFL.BFLY", 0) == 31 * steps


def test_both_kernels_ask_l2_for_what_they_load_ahead_without_spilling(compiled):
    """ScanTiling.prefetch_steps: L2 prefetches (CCTL.E.PF2) that hold no register; the lanes of one
    instruction share a tile's rows (scan_kernels._row_lanes: 32 channels a program, 2-step tiles),
    so it takes one a tile where one a row a step took 10 (forward) and 6 + 6 (backward)."""
    forward, backward = compiled["forward"], compiled["backward"]
    assert forward["flags"]["PF"] > 0 and backward["flags"]["PF"] > 0
    assert forward["flags"]["T"] == backward["flags"]["T"] == 2 and forward["flags"]["BD"] == 32
    assert forward["sass"].get("CCTL.E.PF2", 0) == 1  # u, delta, B, C and z of the tile PF steps on
    # the walk forward's tile; the walk back's; a tile's scratch state (BN floats a lane); the next
    # checkpoint, row by row (16 states)
    assert backward["sass"].get("CCTL.E.PF2", 0) == 1 + 1 + 1 + 16
    for kernel in (forward, backward):
        assert not any(op.startswith(("STL", "LDL")) for op in kernel["sass"])


def test_rows_of_b_and_c_a_state_a_lane_take_no_uniform_registers_and_fewer_registers(compiled):
    """ScanTiling.bc_lanes: B's and C's rows loaded a state a lane, not as 16-byte rows into every
    lane, then spread to a lane's 16 states by 16 shuffles a row a step: the rows stay in ordinary
    registers (ptxas moves whole rows, the same in every lane, into uniform registers right after
    their loads and waits for them there), and both kernels take fewer registers and fewer
    instructions than with whole rows, without spills (the backward: fewer in both walks; it takes
    as many registers as ptxas allows either way, 8 warps an SM)."""
    forward, backward = compiled["forward"], compiled["backward"]
    assert forward["flags"]["BC_LANES"] and backward["flags"]["BC_LANES"]
    steps = forward["flags"]["T"]
    assert forward["sass"].get("SHFL.IDX", 0) == 2 * 16 * steps  # B and C, a step of the loop's tile
    assert forward["sass"].get("R2UR", 0) == 0
    steps = backward["flags"]["T"]
    # swizzled states: state n of lane l from lane l ^ n, a butterfly shuffle like the reduce-scatter's
    spread = 16 * steps + 2 * 16 * steps  # the walk forward: B; back: B, C
    assert backward["sass"].get("SHFL.BFLY", 0) == spread + 31 * steps and "SHFL.IDX" not in backward["sass"]
    for name, kernel in (("forward", forward), ("backward", backward)):
        assert kernel["sass"].get("LDG.E.128", 0) == 0 and kernel["stack"] == 0
        assert not any(
            op.startswith(("LDS", "STS", "BAR")) for op in kernel["sass"]
        )  # the layout held: a channel a lane
        whole = compiled[name + "_whole_rows"]
        assert kernel["instructions"] < whole["instructions"], name
        for walk, whole_walk in zip(kernel["loop_instructions"], whole["loop_instructions"], strict=True):
            assert walk < whole_walk, name
    assert forward["registers"] < compiled["forward_whole_rows"]["registers"]


def test_swizzled_states_spare_the_reduce_scatter_its_selects(compiled):
    """With bc_lanes the backward holds state j ^ (l % 16) in slot j of lane l (scan_kernels._swizzled):
    the reduce-scatter's lanes then all keep their lower slots, so its walk back does without the
    62 selects a step the lanes otherwise make to pick their halves; it keeps 2 a step (dB or dC)."""
    plain, swizzled = compiled["backward_whole_rows"], compiled["backward"]
    assert swizzled["flags"]["SWIZZLE"] and not plain["flags"]["SWIZZLE"]
    steps = plain["flags"]["T"]
    walk_back, walk_back_swizzled = plain["loops"][-1], swizzled["loops"][-1]  # the largest, last
    assert walk_back.get("FSEL", 0) - walk_back_swizzled.get("FSEL", 0) == 60 * steps
    assert swizzled["loop_instructions"][-1] < 0.85 * plain["loop_instructions"][-1]


def test_a_24_bit_scratch_moves_three_words_where_fp32_moves_four_with_a_byte_permute_a_word(compiled):
    """ScanTiling.scratch "fp24": the walk forward stores a tile's state as 12 words a lane where fp32
    stores 16, each word one PRMT of two rounded states (scan_kernels._pack24), and the walk back
    loads 12 where fp32 loads 16; both walks without spills."""
    fp32, fp24 = compiled["backward_scratch_fp32"], compiled["backward"]  # fp24 the 16-bit default
    assert fp32["flags"]["SCRATCH_BITS"] == 32 and fp24["flags"]["SCRATCH_BITS"] == 24
    (walk_forward, walk_back), (packed_forward, packed_back) = fp32["loops"], fp24["loops"]
    assert walk_forward["STG.E"] == 16 and packed_forward["STG.E"] == 12
    assert walk_back["LDG.E"] == 16 and packed_back["LDG.E"] == 12
    assert packed_forward.get("PRMT", 0) - walk_forward.get("PRMT", 0) == 12
    assert not any(op.startswith(("STL", "LDL")) for op in fp24["sass"])


def test_the_carry_between_chunks_issues_a_groups_loads_before_its_stores_without_spilling(compiled):
    """scan_kernels.chunk_carry_kernel walks the chunks serially, GROUP at a time: one pass of its
    loop loads every chunk's local state and sum of dt (a lane's share: BN x BD / 32 values and one
    dt) before the first store of what enters a chunk, so a group waits on its loads once, where
    one chunk at a time waited on each (stored, then loaded). Tiny's backward at batch 64 carries
    over 2 chunks (a group of 2, 32 channels a program), batch 4 at 22001 steps over 86 (groups of 8,
    8 channels a program: scan_triton.carry_shape)."""
    for key, group in (("carry", 2), ("carry_long", 8)):
        carry = compiled[key]
        flags, (loop,) = carry["flags"], carry["loops"]
        per_lane = flags["BN"] * flags["BD"] // 32
        assert flags["GROUP"] == group and carry["loads_before_stores"] == [True], key
        assert loop["LDG.E"] == group * (per_lane + 1) and loop["STG.E"] == group * per_lane, key
        assert carry["stack"] == 0 and not any(op.startswith(("STL", "LDL")) for op in carry["sass"]), key


def test_loads_before_stores_reads_the_order_of_global_accesses():
    from benchmarks.scan_sass import loads_before_stores

    assert loads_before_stores("LDG.E R1, [R2] ;\nLDG.E R3, [R4] ;\nFFMA R1, R1, R3 ;\nSTG.E [R2], R1 ;")
    assert not loads_before_stores("STG.E [R2], R1 ;\nLDG.E R3, [R4] ;")
    assert loads_before_stores("FFMA R1, R1, R3 ;")
