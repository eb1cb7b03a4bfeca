"""`gureum workspaces | users | keys | audit` against a real server, as a user types them."""

from __future__ import annotations

import json

from tests.e2e.cli_runner import run, run_json


def test_workspaces_commands(env: dict[str, str]) -> None:
    created = run_json(env, "workspaces", "create", "studio")
    assert created == {**created, "name": "studio", "role": "owner"}
    names = [w["name"] for w in run_json(env, "workspaces", "list")]
    assert names == ["default", "studio"]
    assert run_json(env, "workspaces", "show", "studio")["name"] == "studio"
    assert run_json(env, "workspaces", "delete", "studio") == {"deleted": "studio"}
    missing = run(env, "workspaces", "show", "studio", "-o", "json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    table = run(env, "workspaces", "list")
    assert table.exit_code == 0 and "default" in table.stdout


def test_users_commands(env: dict[str, str]) -> None:
    added = run_json(env, "users", "add", "mia", "--role", "viewer", "--email", "mia@x.org")
    assert (added["name"], added["role"], added["email"]) == ("mia", "viewer", "mia@x.org")
    assert run_json(env, "users", "set-role", "mia", "developer")["role"] == "developer"
    listed = {u["name"]: u["role"] for u in run_json(env, "users", "list")}
    assert listed == {"admin": "owner", "mia": "developer"}
    assert run_json(env, "users", "remove", "mia") == {"removed": "mia"}
    last = run(env, "users", "remove", "admin")
    assert last.exit_code == 1 and "last owner" in last.output and "Traceback" not in last.output
    bad_role = run(env, "users", "add", "x", "--role", "emperor")
    assert bad_role.exit_code == 2


def test_keys_commands_and_token_shown_once(env: dict[str, str]) -> None:
    run_json(env, "users", "add", "ci-bot", "--role", "developer")
    created = run(env, "keys", "create", "ci", "--user", "ci-bot", "--expires-in-days", "7")
    assert created.exit_code == 0, created.output
    assert "will not be shown again" in created.stdout
    token = next(w for w in created.stdout.split() if w.startswith("gk_"))
    me = run_json(env, "keys", "list", key=token)
    assert [k["user"] for k in me] == ["ci-bot"]
    key_id = token.split("_")[1]
    listed = run(env, "keys", "list", "-o", "json")
    assert key_id in listed.stdout and token.split("_", 2)[2] not in listed.stdout
    # A developer key cannot add users: a clean 403 message, exit code 1.
    denied = run(env, "users", "add", "z", "-o", "json", key=token)
    assert denied.exit_code == 1 and json.loads(denied.stdout)["error"]["code"] == "forbidden"
    revoked = run_json(env, "keys", "revoke", key_id)
    assert revoked["key_id"] == key_id and revoked["revoked_at"]
    gone = run(env, "keys", "list", "-o", "json", key=token)
    assert gone.exit_code == 1 and json.loads(gone.stdout)["error"]["code"] == "unauthorized"


def test_keys_create_json_has_token(env: dict[str, str]) -> None:
    created = run_json(env, "keys", "create", "scripted", "--role", "viewer")
    assert created["token"].startswith(f"gk_{created['key_id']}_")
    assert created["role"] == "viewer"
    wrong = run(env, "keys", "create", "x", "--workspace", "nowhere", "-o", "json")
    assert wrong.exit_code == 1
    assert json.loads(wrong.stdout)["error"]["message"] == "workspace 'nowhere' not found"


def test_audit_command(env: dict[str, str]) -> None:
    run_json(env, "users", "add", "aud", "--role", "viewer")
    token = run_json(env, "keys", "create", "aud", "--user", "aud")["token"]
    events = run_json(env, "audit")
    assert [e["action"] for e in events][:2] == ["key.create", "user.add"]
    assert token not in json.dumps(events)
    only = run_json(env, "audit", "--action", "user.add")
    assert [e["target"] for e in only] == ["aud"]
    assert len(run_json(env, "audit", "--limit", "1")) == 1
    viewer = run(env, "audit", "-o", "json", key=token)
    assert viewer.exit_code == 1 and json.loads(viewer.stdout)["error"]["code"] == "forbidden"
    table = run(env, "audit")
    assert table.exit_code == 0 and "user.add" in table.stdout
