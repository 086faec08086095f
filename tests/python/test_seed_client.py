"""The seed story through Python clients generated from proto/ at test time.

Needs kms-service and table-service running (deploy/test.sh starts them):

    KMS_ADDR=127.0.0.1:50051 TABLES_ADDR=127.0.0.1:50052 \
    ADMIN_TOKEN_FILE=data/kms-service/admin.token \
    python3 -m pytest -p no:cacheprovider tests/python

Stubs are generated with grpc_tools.protoc into a temporary directory at
session start and imported from there; nothing generated is committed.
"""

import importlib
import importlib.resources
import json
import os
import pathlib
import sys
import types
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto"
PROTOS = ("kms/v1/kms.proto", "iam/v1/iam.proto", "table/v1/table.proto")
MODULES = (
    "kms.v1.kms_pb2", "kms.v1.kms_pb2_grpc",
    "iam.v1.iam_pb2", "iam.v1.iam_pb2_grpc",
    "table.v1.table_pb2", "table.v1.table_pb2_grpc",
)
REQUIRED_ENV = ("KMS_ADDR", "TABLES_ADDR", "ADMIN_TOKEN_FILE")
KEY_USER_ACTIONS = [
    "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey",
]


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Generates the stubs with grpc_tools.protoc and imports them."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("generated")
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # timestamp.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    rc = protoc.main(args)
    assert rc == 0, f"grpc_tools.protoc exited {rc}: {' '.join(args)}"
    # Regular packages, so that no same-named package elsewhere on sys.path wins.
    for pkg in ("kms", "kms/v1", "iam", "iam/v1", "table", "table/v1"):
        (out / pkg / "__init__.py").touch()
    sys.path.insert(0, str(out))
    try:
        mods = {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in MODULES}
    finally:
        sys.path.remove(str(out))
    return types.SimpleNamespace(**mods)


def service_env():
    """Where the services are; a missing variable fails the test (never a skip)."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"missing environment variable(s) {', '.join(missing)}: this test needs the "
            "running services, e.g. KMS_ADDR=127.0.0.1:50051 TABLES_ADDR=127.0.0.1:50052 "
            "ADMIN_TOKEN_FILE=data/kms-service/admin.token (deploy/test.sh sets them)",
            pytrace=False,
        )
    token_file = pathlib.Path(os.environ["ADMIN_TOKEN_FILE"])
    token = token_file.read_text().strip() if token_file.is_file() else ""
    if not token:
        pytest.fail(f"ADMIN_TOKEN_FILE={token_file} is missing or empty", pytrace=False)
    # A bare host:port, as grpc takes it; a URL (as the Rust example takes
    # it) is accepted too.
    def target(name):
        return os.environ[name].removeprefix("http://")

    return types.SimpleNamespace(
        kms=target("KMS_ADDR"), tables=target("TABLES_ADDR"), admin_token=token
    )


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def error_info(err):
    """The google.rpc.ErrorInfo in the status details of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no google.rpc.Status details in {err.code()}: {err.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no google.rpc.ErrorInfo among {[d.type_url for d in status.details]}")


def test_seed_story(pb):
    env = service_env()
    with grpc.insecure_channel(env.kms) as kms_channel, grpc.insecure_channel(
        env.tables
    ) as tables_channel:
        seed_story(pb, env, kms_channel, tables_channel)


def seed_story(pb, env, kms_channel, tables_channel):
    kms = pb.kms_pb2_grpc.KeyManagementServiceStub(kms_channel)
    iam = pb.iam_pb2_grpc.IdentityServiceStub(kms_channel)
    tables = pb.table_pb2_grpc.TableServiceStub(tables_channel)
    admin = bearer(env.admin_token)
    suffix = uuid.uuid4().hex[:10]
    table_name = f"python-client-table-{suffix}"
    user_name = f"python-client-user-{suffix}"
    S = lambda s: pb.table_pb2.AttributeValue(s=s)  # noqa: E731
    item = {"id": S("1"), "order": S("3 bikes")}
    key = {"id": S("1")}

    # The admin creates a key and a table encrypted with it, puts and gets an item.
    key_id = kms.CreateKey(
        pb.kms_pb2.CreateKeyRequest(description="python-client-key"), metadata=admin
    ).key_metadata.key_id
    assert key_id

    created = tables.CreateTable(
        pb.table_pb2.CreateTableRequest(
            table_name=table_name,
            key_schema=pb.table_pb2.KeySchema(
                partition_key=pb.table_pb2.KeyElement(name="id", type=pb.table_pb2.SCALAR_TYPE_S)
            ),
            sse_specification=pb.table_pb2.SseSpecification(kms_key_id=key_id),
        ),
        metadata=admin,
    )
    assert created.table_description.table_name == table_name

    tables.PutItem(pb.table_pb2.PutItemRequest(table_name=table_name, item=item), metadata=admin)
    got = tables.GetItem(pb.table_pb2.GetItemRequest(table_name=table_name, key=key), metadata=admin)
    assert dict(got.item) == item

    # A user with TableFullAccess but nothing in the key policy.
    iam.CreateUser(pb.iam_pb2.CreateUserRequest(user_name=user_name), metadata=admin)
    iam.AttachUserPolicy(
        pb.iam_pb2.AttachUserPolicyRequest(user_name=user_name, policy_name="TableFullAccess"),
        metadata=admin,
    )
    user = bearer(
        iam.CreateAccessToken(
            pb.iam_pb2.CreateAccessTokenRequest(user_name=user_name), metadata=admin
        ).token
    )

    with pytest.raises(grpc.RpcError) as refused:
        tables.GetItem(pb.table_pb2.GetItemRequest(table_name=table_name, key=key), metadata=user)
    err = refused.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert "not authorized to perform: kms:Decrypt" in err.details()
    assert error_info(err).reason == "AccessDeniedException"

    with pytest.raises(grpc.RpcError) as refused:
        tables.PutItem(
            pb.table_pb2.PutItemRequest(table_name=table_name, item={"id": S("2")}), metadata=user
        )
    err = refused.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert "not authorized to perform: kms:GenerateDataKey" in err.details()

    # The admin adds the user to the key policy with the key-user actions.
    policy = json.loads(
        kms.GetKeyPolicy(
            pb.kms_pb2.GetKeyPolicyRequest(key_id=key_id, policy_name="default"), metadata=admin
        ).policy
    )
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    statements.append(
        {
            "Sid": "AllowKeyUse",
            "Effect": "Allow",
            "Principal": {"AWS": f"user/{user_name}"},
            "Action": KEY_USER_ACTIONS,
            "Resource": "*",
        }
    )
    policy["Statement"] = statements
    kms.PutKeyPolicy(
        pb.kms_pb2.PutKeyPolicyRequest(
            key_id=key_id, policy_name="default", policy=json.dumps(policy)
        ),
        metadata=admin,
    )

    # Now the user reads the item.
    got = tables.GetItem(pb.table_pb2.GetItemRequest(table_name=table_name, key=key), metadata=user)
    assert dict(got.item) == item
