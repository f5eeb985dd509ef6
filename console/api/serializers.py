"""Request and response shapes of the API (also what the OpenAPI schema shows)."""

from __future__ import annotations

from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers

from console.api.codec import INT64_MAX

# etcd's MaxLeaseTTL (9,000,000,000 s): a grant above it fails with "too large lease TTL".
MAX_LEASE_TTL = 9_000_000_000
ENCODINGS = ["utf-8", "base64"]


class RawTextField(serializers.CharField):  # type: ignore[misc]  # DRF is untyped
    """A string kept as sent: blanks, surrounding spaces and NUL characters allowed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        validators: list[Any] = getattr(self, "validators", [])
        self.validators = [
            v for v in validators if not isinstance(v, ProhibitNullCharactersValidator)
        ]


class Shape(serializers.Serializer):  # type: ignore[misc]  # DRF is untyped
    """Base of the API's serializers."""


# --- errors -------------------------------------------------------------------------------


class ErrorSerializer(Shape):
    error = serializers.CharField(help_text="What went wrong, for people.")
    etcd_error = serializers.CharField(
        allow_null=True, help_text="etcd's own message when the cluster refused, else null."
    )
    code = serializers.CharField(
        allow_null=True, help_text="etcd's gRPC status code name (e.g. OUT_OF_RANGE), or null."
    )


class PreconditionFailedSerializer(ErrorSerializer):
    mod_revision = serializers.IntegerField(
        help_text="The key's current mod revision (0: the key does not exist)."
    )


# --- keys ---------------------------------------------------------------------------------


class KeyValueSerializer(Shape):
    key = serializers.CharField(help_text="The key: UTF-8 text, or base64 (see key_encoding).")
    key_encoding = serializers.ChoiceField(choices=ENCODINGS)
    key_id = serializers.CharField(
        help_text="The key's bytes in unpadded base64url: its path segment under /api/v1/keys/."
    )
    value = serializers.CharField(
        required=False, help_text="The value: UTF-8 text, or base64 (see encoding)."
    )
    encoding = serializers.ChoiceField(choices=ENCODINGS, required=False)
    create_revision = serializers.IntegerField()
    mod_revision = serializers.IntegerField()
    version = serializers.IntegerField()
    lease = serializers.IntegerField(help_text="The key's lease id (0: none).")


class KeyDetailSerializer(KeyValueSerializer):
    revision = serializers.IntegerField(help_text="The store revision read at.")


class KeyPutResultSerializer(KeyDetailSerializer):
    created = serializers.BooleanField(help_text="Whether the key did not exist before.")


class KeyListSerializer(Shape):
    revision = serializers.IntegerField(help_text="The revision read; every page uses it.")
    count = serializers.IntegerField(help_text="Keys in the range from the cursor on.")
    more = serializers.BooleanField(help_text="Whether more keys follow this page.")
    next = serializers.CharField(
        allow_null=True, help_text="The cursor of the next page (pass as cursor), or null."
    )
    items = KeyValueSerializer(many=True)


class KeyDeleteSerializer(Shape):
    deleted = serializers.IntegerField(help_text="How many keys were deleted.")
    revision = serializers.IntegerField(
        required=False, help_text="The revision of the delete (single keys)."
    )


class KeyPutSerializer(Shape):
    """The body of ``PUT /api/v1/keys/<key_id>/``."""

    value = RawTextField(help_text="The new value: UTF-8 text, or base64 with encoding=base64.")
    encoding = serializers.ChoiceField(choices=ENCODINGS, default="utf-8")
    lease = serializers.IntegerField(
        required=False, min_value=0, max_value=INT64_MAX, help_text="Attach to this lease id."
    )
    ttl = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_LEASE_TTL,
        help_text="Grant a new lease of ttl seconds and attach the key to it.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("lease") and attrs.get("ttl"):
            raise serializers.ValidationError("give either lease or ttl, not both")
        return attrs


class KeyHistorySerializer(Shape):
    complete = serializers.BooleanField(
        help_text="Whether the walk reached the key's create revision (its first version)."
    )
    compacted = serializers.BooleanField(help_text="Whether older versions were compacted.")
    truncated = serializers.BooleanField(help_text="Whether it stopped at the limit.")
    items = KeyValueSerializer(
        many=True, help_text="Versions of the key's current life, newest first."
    )


class KeyRefSerializer(Shape):
    key = serializers.CharField(help_text="UTF-8 text, or base64 (see key_encoding).")
    key_encoding = serializers.ChoiceField(choices=ENCODINGS)
    key_id = serializers.CharField(help_text="Unpadded base64url of the key's bytes.")


class TreeEntrySerializer(KeyRefSerializer):
    label = serializers.CharField(help_text="The name below the folder (UTF-8 with escapes).")
    is_folder = serializers.BooleanField()
    count = serializers.IntegerField(allow_null=True, help_text="Keys under a folder.")
    kv = KeyValueSerializer(allow_null=True, help_text="A key's metadata (no value).")


class TreeSerializer(Shape):
    revision = serializers.IntegerField()
    folder = KeyRefSerializer(help_text="The folder listed (empty key: the root).")
    next = serializers.CharField(
        allow_null=True, help_text="Pass as after for the next page; null on the last."
    )
    items = TreeEntrySerializer(many=True)


# --- leases -------------------------------------------------------------------------------


class LeaseGrantSerializer(Shape):
    ttl = serializers.IntegerField(min_value=1, max_value=MAX_LEASE_TTL, help_text="Seconds.")
    id = serializers.IntegerField(
        required=False, default=0, min_value=0, max_value=INT64_MAX,
        help_text="The lease id to use (0 or absent: the cluster picks one).",
    )  # fmt: skip


class LeaseSerializer(Shape):
    id = serializers.IntegerField(
        help_text="Lease id (int64: beyond JavaScript's exact integers; use id_hex there)."
    )
    id_hex = serializers.CharField(
        help_text="The id in hex, as etcdctl prints it; /leases/0x<id_hex>/ addresses it."
    )
    ttl = serializers.IntegerField(help_text="Seconds left.")
    granted_ttl = serializers.IntegerField(help_text="The TTL it was granted with.")


class LeaseDetailSerializer(LeaseSerializer):
    keys = KeyRefSerializer(many=True, required=False, help_text="Attached keys (keys=true).")


class LeaseListSerializer(Shape):
    items = LeaseSerializer(many=True)


class LeaseRevokeSerializer(Shape):
    revoked = serializers.IntegerField()
    revision = serializers.IntegerField()


# --- cluster ------------------------------------------------------------------------------


class MemberSerializer(Shape):
    id = serializers.IntegerField(help_text="Member id (uint64; see id_hex).")
    id_hex = serializers.CharField(help_text="The id in hex; /cluster/members/0x<id_hex>/...")
    name = serializers.CharField(allow_blank=True, help_text="Empty until the member started.")
    peer_urls = serializers.ListField(child=serializers.CharField())
    client_urls = serializers.ListField(child=serializers.CharField())
    is_learner = serializers.BooleanField()


class MemberListSerializer(Shape):
    items = MemberSerializer(many=True)


class StatusSerializer(Shape):
    endpoint = serializers.CharField()
    member_id = serializers.IntegerField()
    version = serializers.CharField(help_text="The server's version.")
    db_size = serializers.IntegerField(help_text="Backend size in bytes.")
    db_size_in_use = serializers.IntegerField()
    leader = serializers.IntegerField(help_text="The leader's member id (0: none).")
    is_leader = serializers.BooleanField()
    raft_index = serializers.IntegerField()
    raft_term = serializers.IntegerField()
    raft_applied_index = serializers.IntegerField()
    revision = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.CharField(), help_text="Alarms and such.")
    is_learner = serializers.BooleanField()


class MemberStatusSerializer(MemberSerializer):
    status = StatusSerializer(allow_null=True, help_text="Null when the member did not answer.")
    error = serializers.CharField(allow_null=True, help_text="Why it did not answer, or null.")


class ClusterStatusSerializer(Shape):
    items = MemberStatusSerializer(many=True)


# --- auth ---------------------------------------------------------------------------------


class MeSerializer(Shape):
    username = serializers.CharField()
    can_edit = serializers.BooleanField()
