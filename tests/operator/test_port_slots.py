"""Port slots in process: the port arithmetic, the allocation table, the settings' checks."""

import subprocess

import pytest

from sip_operator.port_slots import PortPlan, PortPlanError, SlotTable, WorkerPorts
from sip_operator.settings import OperatorSettings, SettingsError, load_settings
from tests.support.operator_harness import OPERATOR_BIN


def test_a_slot_is_the_base_ports_plus_the_slot_and_its_own_rtp_block() -> None:
    plan = OperatorSettings().port_plan
    assert plan.ports(0) == WorkerPorts(
        sip=5060, grpc=50099, metrics=9464, rtp=20000, rtp_count=100
    )
    assert plan.ports(3) == WorkerPorts(
        sip=5063, grpc=50102, metrics=9467, rtp=20300, rtp_count=100
    )
    assert plan.ports(49).rtp == 24900
    with pytest.raises(ValueError, match="slot 50"):
        plan.ports(50)


def test_without_metrics_a_slot_has_no_metrics_port() -> None:
    plan = OperatorSettings(metrics_port=0).port_plan
    assert plan.ports(7).metrics == 0
    assert [kind for kind, _ in plan.ranges()] == ["SIP", "gRPC", "RTP"]
    plan.check()


def test_a_pod_network_worker_keeps_the_fixed_ports_and_a_bounded_rtp_range() -> None:
    assert OperatorSettings().worker_ports(None) == WorkerPorts(
        sip=5060, grpc=50099, metrics=9464, rtp=4000, rtp_count=100
    )


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (PortPlan(50, 5060, 50099, 9464, 5000, 100), "SIP ports 5060-5109 overlap RTP ports"),
        (PortPlan(50, 5060, 5100, 9464, 20000, 100), "SIP ports 5060-5109 overlap gRPC ports"),
        (PortPlan(50, 5060, 65500, 9464, 20000, 100), "gRPC ports 65500-65549 go beyond"),
        (PortPlan(50, 5060, 50099, 9464, 61000, 100), "RTP ports 61000-65999 go beyond"),
    ],
)
def test_overlapping_or_too_high_ranges_are_refused(plan: PortPlan, message: str) -> None:
    with pytest.raises(PortPlanError, match=message):
        plan.check()


def test_new_sessions_get_the_lowest_slot_with_the_fewest_holders() -> None:
    table = SlotTable(3)
    assert [table.allocate(f"s{n}") for n in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    table.release("s1")
    table.release("s4")  # slot 1 has no holder now, 0 has three, 2 has two
    assert table.allocate("new") == 1
    assert table.allocate("newer") == 1
    assert table.slot_of("s1") is None and table.slot_of("s2") == 2


def test_a_claim_counts_and_one_outside_the_slots_is_refused() -> None:
    table = SlotTable(3)
    assert table.claim("old", 2)
    assert not table.claim("stale", 3)
    assert table.slot_of("stale") is None
    assert table.allocate("a") == 0 and table.allocate("b") == 1 and table.allocate("c") == 0
    assert table.claim("old", 1)  # claiming again moves the holder
    assert table.allocate("d") == 2


def test_seeding_starts_over_and_a_reset_forgets_until_seeded_again() -> None:
    table = SlotTable(2)
    assert not table.seeded
    table.allocate("gone")
    table.seed([("a", 0), ("b", 5)])
    assert table.seeded and table.slot_of("gone") is None and table.slot_of("b") is None
    assert table.allocate("c") == 1
    table.reset()
    assert not table.seeded and table.slot_of("a") is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SIP_OPERATOR_SLOT_RTP_PORT": "5000"}, "SIP ports 5060-5109 overlap RTP ports 5000"),
        (
            {"SIP_OPERATOR_SLOTS_PER_NODE": "200", "SIP_OPERATOR_SLOT_RTP_PORT": "40000"},
            "gRPC ports 50099-50298 overlap RTP ports 40000-59999",
        ),
        ({"SIP_OPERATOR_GRPC_PORT": "65500"}, "go beyond port 65535"),
        ({"SIP_OPERATOR_SLOT_RTP_PORTS": "101"}, "SLOT_RTP_PORTS=101: must be even"),
        ({"SIP_OPERATOR_SLOT_RTP_PORTS": "6"}, "SLOT_RTP_PORTS='6': must be between 8"),
        ({"SIP_OPERATOR_SLOTS_PER_NODE": "0"}, "SLOTS_PER_NODE='0': must be between 1"),
        ({"SIP_OPERATOR_SLOTS_PER_NODE": "2.5"}, "SLOTS_PER_NODE=2.5: must be an integer"),
    ],
)
def test_bad_slot_settings_are_refused_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ)


def test_the_slot_settings_are_read() -> None:
    settings = load_settings(
        {
            "SIP_OPERATOR_SLOTS_PER_NODE": "10",
            "SIP_OPERATOR_SLOT_RTP_PORT": "30000",
            "SIP_OPERATOR_SLOT_RTP_PORTS": "40",
        }
    )
    assert settings.worker_ports(9) == WorkerPorts(5069, 50108, 9473, rtp=30360, rtp_count=40)


def test_the_operator_refuses_to_start_with_overlapping_slots() -> None:
    refused = subprocess.run(
        [str(OPERATOR_BIN), "-A"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SIP_OPERATOR_SLOT_RTP_PORT": "9000"},
    )
    assert refused.returncode == 2
    assert "metrics ports 9464-9513 overlap RTP ports 9000-13999" in refused.stderr
