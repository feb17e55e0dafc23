"""The SipSession CRD: a valid CRD whose schema accepts the examples and refuses bad specs.

Specs are checked the way the apiserver does it: defaults from the schema filled in first,
then validated against the openAPIV3Schema (here with `jsonschema`).
"""

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sip_operator.session_spec import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds/sipsession.yaml").read_text())
(VERSION,) = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fills in `default`s the way the apiserver does before validating."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = with_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], item) for item in value]
    return value


def errors(document: dict[str, Any]) -> list[str]:
    defaulted = with_defaults(SCHEMA, copy.deepcopy(document))
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [error.message for error in validator.iter_errors(defaulted)]


def session(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "sip-operator.dev/v1alpha1",
        "kind": "SipSession",
        "metadata": {"name": "s"},
        "spec": spec,
    }


def good_spec() -> dict[str, Any]:
    return {
        "account": {
            "name": "alice@pbx.example.com",
            "passwordSecretRef": {"name": "alice-sip", "key": "password"},
        }
    }


def test_the_crd_is_a_valid_kubernetes_object_with_the_agreed_names() -> None:
    kubernetes_validate.validate(CRD, "1.32", strict=True)
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "sipsessions.sip-operator.dev"
    assert spec["group"] == "sip-operator.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "SipSession" and spec["names"]["plural"] == "sipsessions"
    assert spec["names"]["shortNames"] == ["sips"]
    assert VERSION["name"] == "v1alpha1" and VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Status": ".status.lastStatus.type",
        "Account": ".spec.account.name",
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }


def _structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Kubernetes structural-schema rules the python validator does not know."""
    problems = []
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties together")
    untyped_allowed = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if path and "type" not in schema and not untyped_allowed:
        problems.append(f"{path}: no type")
    for key, sub in (schema.get("properties") or {}).items():
        problems += _structural_problems(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        problems += _structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += _structural_problems(schema["additionalProperties"], f"{path}{{}}")
    return problems


def test_the_schema_is_structural() -> None:
    assert _structural_problems(SCHEMA) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_and_runnable(example: Path) -> None:
    document = yaml.safe_load(example.read_text())
    assert document["kind"] == "SipSession"
    assert errors(document) == []
    # The operator's own defaults are the schema's: defaulted or not, the same spec results.
    defaulted = with_defaults(SCHEMA, copy.deepcopy(document))
    assert parse_spec(defaulted["spec"]) == parse_spec(document["spec"])


@pytest.mark.parametrize(
    "account_name",
    [
        "alice@pbx.example.com",
        "sip:alice@pbx.example.com",
        "sips:alice@pbx.example.com:5061",
        "+4930123@10.0.0.1:5060",
        "alice@[2001:db8::1]:5060",
    ],
)
def test_account_names_of_every_accepted_form(account_name: str) -> None:
    spec = good_spec()
    spec["account"]["name"] = account_name
    assert errors(session(spec)) == []


def _bad(change: Any) -> dict[str, Any]:
    spec = good_spec()
    change(spec)
    return spec


BAD_SPECS = {
    "no account": _bad(lambda s: s.pop("account")),
    "account without host": _bad(lambda s: s["account"].update(name="alice")),
    "account with a space": _bad(lambda s: s["account"].update(name="al ice@pbx")),
    "account with CRLF": _bad(lambda s: s["account"].update(name="a@pbx\r\nX-Evil: 1")),
    "account with a port too long": _bad(lambda s: s["account"].update(name="a@pbx:506000")),
    "account with a host label over 63 characters": _bad(
        lambda s: s["account"].update(name="a@" + "p" * 64 + ".example")
    ),
    "no passwordSecretRef": _bad(lambda s: s["account"].pop("passwordSecretRef")),
    "no passwordSecretRef, registering": _bad(
        lambda s: (s["account"].pop("passwordSecretRef"), s["account"].update(register=True))
    ),
    "passwordSecretRef without key": _bad(lambda s: s["account"]["passwordSecretRef"].pop("key")),
    "passwordSecretRef without name": _bad(lambda s: s["account"]["passwordSecretRef"].pop("name")),
    "secret name not DNS": _bad(
        lambda s: s["account"]["passwordSecretRef"].update(name="Alice_SIP")
    ),
    "a password inline": _bad(lambda s: s["account"].update(passwordSecretRef="hunter2")),
    "negative autoAnswerInterval": _bad(lambda s: s.update(autoAnswerInterval=-1)),
    "autoAnswerInterval as text": _bad(lambda s: s.update(autoAnswerInterval="3")),
    "transport sctp": _bad(lambda s: s.update(transport="sctp")),
    "startSession as text": _bad(lambda s: s.update(startSession="yes")),
    "register as text": _bad(lambda s: s["account"].update(register="false")),
    "authUsername with CRLF": _bad(lambda s: s["account"].update(authUsername="a\r\nb")),
    "outboundProxy not a SIP URI": _bad(
        lambda s: s["account"].update(outboundProxy="proxy.example.com")
    ),
    "history maxLength 0": _bad(lambda s: s.update(history={"maxLength": 0})),
    "retention not a duration": _bad(lambda s: s.update(history={"retainAfterDeletion": "1 week"})),
    "drainTimeout not a duration": _bad(lambda s: s.update(worker={"drainTimeout": "1 hour"})),
    "drainTimeout a number": _bad(lambda s: s.update(worker={"drainTimeout": 3600})),
    "hostNetwork as text": _bad(lambda s: s.update(worker={"hostNetwork": "true"})),
    "toleration operator unknown": _bad(
        lambda s: s.update(worker={"tolerations": [{"key": "a", "operator": "Maybe"}]})
    ),
    "nodeSelector value not text": _bad(lambda s: s.update(worker={"nodeSelector": {"a": 1}})),
    "image with a space": _bad(lambda s: s.update(worker={"image": "sip worker"})),
    "STUN server as a URI": _bad(lambda s: s.update(sip={"stunServers": ["stun:example.com"]})),
    "STUN servers as text": _bad(lambda s: s.update(sip={"stunServers": "stun.example.com"})),
    "keep-alive beyond an hour": _bad(lambda s: s.update(sip={"keepaliveInterval": 7200})),
    "public address with a port": _bad(lambda s: s.update(sip={"publicAddress": "203.0.113.1:5"})),
}


@pytest.mark.parametrize("spec", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_specs_are_refused(spec: dict[str, Any]) -> None:
    assert errors(session(spec)) != []


def test_a_spec_without_the_schema_still_fails_clearly_in_the_operator() -> None:
    with pytest.raises(SpecError, match=r"passwordSecretRef\.key is required"):
        parse_spec(BAD_SPECS["passwordSecretRef without key"])
    with pytest.raises(SpecError, match="transport"):
        parse_spec(BAD_SPECS["transport sctp"])
    with pytest.raises(SpecError, match="retainAfterDeletion"):
        parse_spec(BAD_SPECS["retention not a duration"])
    with pytest.raises(SpecError, match=r"spec\.worker\.drainTimeout '1 hour' is not a duration"):
        parse_spec(BAD_SPECS["drainTimeout not a duration"])
    with pytest.raises(SpecError, match=r"spec\.worker\.drainTimeout must be a string"):
        parse_spec(BAD_SPECS["drainTimeout a number"])
    with pytest.raises(SpecError, match="autoAnswerInterval"):
        parse_spec(BAD_SPECS["negative autoAnswerInterval"])
    with pytest.raises(SpecError, match=r"spec\.account\.register must be true or false"):
        parse_spec(BAD_SPECS["register as text"])


def test_an_account_that_never_registers_needs_no_password() -> None:
    spec = good_spec()
    del spec["account"]["passwordSecretRef"]
    spec["account"]["register"] = False
    assert errors(session(spec)) == []
    assert parse_spec(spec).password_ref is None
    with pytest.raises(SpecError, match="passwordSecretRef is required unless"):
        parse_spec(BAD_SPECS["no passwordSecretRef"])


def test_register_defaults_to_true_and_leaves_existing_pods_alone() -> None:
    minimal = yaml.safe_load((REPO / "examples/sipsession-minimal.yaml").read_text())["spec"]
    spec = parse_spec(minimal)
    assert spec.register is True
    # The fingerprint this spec had before `register` existed: a different one would replace
    # every existing session's pod on an operator upgrade.
    assert spec.fingerprint == "6bd83af1f4065011"
    defaulted = parse_spec(with_defaults(SCHEMA, session(copy.deepcopy(minimal)))["spec"])
    assert defaulted.fingerprint == spec.fingerprint
    minimal["account"]["register"] = False
    assert parse_spec(minimal).fingerprint != spec.fingerprint
