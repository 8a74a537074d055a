"""Storage providers: credentials parsing per kind, the endpoint rule, bucket and path checks,
the rclone options of a remote, and that no error message ever echoes a credential value."""

from __future__ import annotations

import json

import pytest

from sandboxd.buckets import KINDS, Remote, check_endpoint, check_path_in_bucket, parse_credentials
from sandboxd.buckets.providers import check_bucket
from sandboxd.buckets.rclone import _classify, _scrub
from sandboxd.errors import InvalidRequest

SECRET = "Sup3rSecretValue-XYZ"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
SA_KEY = {
    "type": "service_account", "project_id": "p", "private_key_id": "abcdef0123456789",
    "private_key": PEM, "client_email": "sa@p.iam.gserviceaccount.com", "client_id": "1",
    "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": "https://oauth2.googleapis.com/token",
}


def refused(kind: str, doc: object) -> str:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(InvalidRequest) as err:
        parse_credentials(kind, raw)
    assert SECRET not in err.value.message
    return err.value.message


def test_kinds_are_defined_once() -> None:
    assert KINDS == ("s3", "gcs", "azure")
    with pytest.raises(InvalidRequest, match="expected one of s3, gcs, azure"):
        parse_credentials("ftp", b"{}")


def test_s3_credentials() -> None:
    assert parse_credentials("s3", json.dumps({"access_key_id": "AK", "secret_access_key": SECRET}).encode()) == {
        "access_key_id": "AK", "secret_access_key": SECRET}
    with_token = {"access_key_id": "AK", "secret_access_key": SECRET, "session_token": "tok-" + SECRET}
    assert parse_credentials("s3", json.dumps(with_token).encode()) == with_token


@pytest.mark.parametrize(("doc", "words"), [
    ({"access_key_id": "AK"}, "missing field in s3 credentials: 'secret_access_key'"),
    ({"access_key_id": "AK", "secret_access_key": SECRET, "region": SECRET}, "unknown field in s3 credentials: 'region'"),
    ({"access_key_id": "AK", "secret_access_key": 5}, "'secret_access_key' must be a non-empty string"),
    ({"access_key_id": "AK", "secret_access_key": SECRET + "\n[evil]"}, "'secret_access_key' has control characters"),
    ({"access_key_id": "AK", "secret_access_key": " " + SECRET}, "surrounding spaces"),
    ([SECRET], "s3 credentials must be a JSON object"),
    (SECRET.encode(), "s3 credentials must be a JSON object"),
    (b"\xff" + SECRET.encode(), "s3 credentials must be a JSON object"),
])
def test_s3_credentials_refused_naming_the_field(doc: object, words: str) -> None:
    assert words in refused("s3", doc)


def test_gcs_service_account_key_and_anonymous() -> None:
    parsed = parse_credentials("gcs", json.dumps(SA_KEY, indent=2).encode())
    assert list(parsed) == ["service_account_credentials"]
    value = parsed["service_account_credentials"]
    assert "\n" not in value and json.loads(value) == SA_KEY  # one config line, the same key
    assert parse_credentials("gcs", b'{"anonymous": true}') == {"anonymous": "true"}


@pytest.mark.parametrize(("doc", "words"), [
    ({**SA_KEY, "type": "authorized_user"}, 'type must be "service_account"'),
    ({k: v for k, v in SA_KEY.items() if k != "private_key"}, "missing field in gcs credentials: 'private_key'"),
    ({**SA_KEY, "private_key": SECRET}, "private_key is not a PEM private key"),
    ({**SA_KEY, "client_id": {"x": SECRET}}, "field 'client_id' must be a string"),
    ({**SA_KEY, "token_uri": "http://169.254.169.254/token"}, "token_uri uses plain http:// to a non-loopback host"),
    ({"anonymous": True, "private_key": SECRET}, "anonymous access is exactly"),
    ({"anonymous": "yes"}, "anonymous access is exactly"),
])
def test_gcs_credentials_refused(doc: object, words: str) -> None:
    assert words in refused("gcs", doc)


def test_azure_credentials() -> None:
    key = {"account": "devstoreaccount1", "key": SECRET}
    assert parse_credentials("azure", json.dumps(key).encode()) == key
    sas = {"account": "acct1", "sas_url": f"https://acct1.blob.core.windows.net/c?sv=2024&sig={SECRET}"}
    assert parse_credentials("azure", json.dumps(sas).encode()) == sas


@pytest.mark.parametrize(("doc", "words"), [
    ({"key": SECRET}, "missing field 'account'"),
    ({"account": "acct1"}, "missing field 'key' or 'sas_url'"),
    ({"account": "acct1", "key": SECRET, "sas_url": "https://a/?sig=" + SECRET}, "either key or sas_url, not both"),
    ({"account": "acct1", "key": SECRET, "tenant": SECRET}, "unknown field 'tenant'"),
    ({"account": "Not An Account", "key": SECRET}, "account must be 3-24 lowercase letters or digits"),
    ({"account": "acct1", "sas_url": "https://acct1.blob.core.windows.net/c"}, "sas_url must be a SAS URL"),
    ({"account": "acct1", "sas_url": "http://evil.example/c?sig=" + SECRET}, "sas_url uses plain http://"),
])
def test_azure_credentials_refused(doc: object, words: str) -> None:
    assert words in refused("azure", doc)


def test_oversized_credentials_refused() -> None:
    assert "larger than 64 KiB" in refused("s3", b" " * (65 * 1024))


@pytest.mark.parametrize("url", [
    "https://s3.eu-west-1.amazonaws.com", "https://minio.internal:9000", "https://[2001:db8::1]:443/x",
    "http://127.0.0.1:8333", "http://127.9.9.9", "http://localhost:10000/devstoreaccount1", "http://[::1]:4443",
])
def test_endpoint_allowed(url: str) -> None:
    assert check_endpoint(url) == url


@pytest.mark.parametrize(("url", "words"), [
    ("http://10.0.0.5:9000", "plain http:// to a non-loopback host"),
    ("http://s3.example.com", "plain http:// to a non-loopback host"),
    ("http://127.0.0.1.nip.io", "plain http:// to a non-loopback host"),  # names are not resolved
    ("http://[::ffff:10.0.0.1]", "plain http:// to a non-loopback host"),
    ("ftp://127.0.0.1", "must be an https:// URL"),
    ("s3.amazonaws.com", "must be an https:// URL"),
    ("https://user:pw@host", "must not hold credentials"),
    ("https://host/?x=1", "must not have a query"),
    ("https://host\n[x]", "control characters"),
    ("https://host:99999", "not a valid URL"),
])
def test_endpoint_refused(url: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(").replace("+", r"\+")):
        check_endpoint(url)


@pytest.mark.parametrize(("kind", "bucket", "ok"), [
    ("s3", "my-bucket.data", True), ("s3", "ab", False), ("s3", "My_Bucket", False), ("s3", "a..b", False),
    ("gcs", "my_bucket-1", True), ("gcs", "-bad", False),
    ("azure", "container-1", True), ("azure", "double--hyphen", False), ("azure", "under_score", False),
    ("s3", "bucket/../other", False), ("s3", "b\nx", False),
])
def test_bucket_names(kind: str, bucket: str, ok: bool) -> None:
    if ok:
        assert check_bucket(kind, bucket) == bucket
    else:
        with pytest.raises(InvalidRequest):
            check_bucket(kind, bucket)


@pytest.mark.parametrize(("path", "normal"), [
    ("", ""), ("/", ""), ("a/b", "a/b"), ("/a//b/", "a/b"), ("team a/x:y", "team a/x:y"),
])
def test_path_in_bucket_normalised(path: str, normal: str) -> None:
    assert check_path_in_bucket(path) == normal


@pytest.mark.parametrize("path", ["..", "a/../b", "a/./b", "a\\b", "a/\x00", "a/\nb", "x" * 1025])
def test_path_in_bucket_refused(path: str) -> None:
    with pytest.raises(InvalidRequest):
        check_path_in_bucket(path)


def test_remote_options_per_kind() -> None:
    s3 = Remote("s3", "bkt", {"access_key_id": "AK", "secret_access_key": SECRET}, endpoint="http://127.0.0.1:8333")
    assert s3.rclone_options() == {
        "type": "s3", "provider": "Other", "env_auth": "false", "no_check_bucket": "true",
        "access_key_id": "AK", "secret_access_key": SECRET,
        "endpoint": "http://127.0.0.1:8333", "force_path_style": "true", "region": "us-east-1",
    }
    aws = Remote("s3", "bkt", {"access_key_id": "AK", "secret_access_key": SECRET}, region="eu-west-1").rclone_options()
    assert aws["provider"] == "AWS" and aws["region"] == "eu-west-1" and "endpoint" not in aws
    gcs = Remote("gcs", "bkt", {"anonymous": "true"}, endpoint="http://127.0.0.1:9023").rclone_options()
    assert gcs == {"type": "google cloud storage", "env_auth": "false", "bucket_policy_only": "true",
                   "anonymous": "true", "endpoint": "http://127.0.0.1:9023"}
    azure = Remote("azure", "cont", {"account": "acct1", "key": SECRET}).rclone_options()
    assert azure == {"type": "azureblob", "env_auth": "false", "account": "acct1", "key": SECRET}


def test_remote_checks_itself_and_hides_credentials() -> None:
    remote = Remote("s3", "bkt", {"access_key_id": "AK", "secret_access_key": SECRET})
    assert SECRET not in repr(remote)
    with pytest.raises(InvalidRequest, match="region applies only to s3"):
        Remote("gcs", "bkt", {"anonymous": "true"}, region="us-east1")
    with pytest.raises(InvalidRequest, match="plain http"):
        Remote("s3", "bkt", {"access_key_id": "AK", "secret_access_key": SECRET}, endpoint="http://10.1.1.1")
    with pytest.raises(InvalidRequest, match="do not fit a gcs connection"):
        Remote("gcs", "bkt", {"access_key_id": "AK", "secret_access_key": SECRET})


def test_secrets_cover_every_credential_form() -> None:
    sa = parse_credentials("gcs", json.dumps(SA_KEY).encode())
    values = Remote("gcs", "bkt", sa).secrets()
    assert PEM in values and "abcdef0123456789" in values and sa["service_account_credentials"] in values
    sas = parse_credentials("azure", json.dumps({"account": "acct1", "sas_url": "https://a.b/c?sv=1&sig=ab%2Bcd%3D"}).encode())
    values = Remote("azure", "cont", sas).secrets()
    assert "ab%2Bcd%3D" in values and "ab+cd=" in values and "acct1" not in values
    assert Remote("gcs", "bkt", {"anonymous": "true"}).secrets() == []


def test_log_lines_scrubbed() -> None:
    remote = Remote("s3", "bkt", {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET})
    assert _scrub([f"ERROR : key {SECRET} refused for AKIDEXAMPLE"], remote.secrets()) == ["ERROR : key *** refused for ***"]


@pytest.mark.parametrize(("line", "code", "reason"), [
    ("api error SignatureDoesNotMatch: The request signature we calculated", 2, "credentials"),
    ("RESPONSE 403: 403 Server failed to authenticate the request. ERROR CODE: AuthorizationFailure", 2, "credentials"),
    ('oauth2: "invalid_grant" "Invalid JWT Signature."', 2, "credentials"),
    ("error in ListJSON: directory not found", 3, "bucket"),
    ("dial tcp 127.0.0.1:1: connect: connection refused", 5, "unreachable"),
    ("tls: failed to verify certificate: x509: certificate signed by unknown authority", 5, "unreachable"),
    ("something else entirely", 1, "other"),
])
def test_failures_classified(line: str, code: int, reason: str) -> None:
    assert _classify([f"2026/12/07 13:58:23 ERROR : {line}"], code)[0] == reason
