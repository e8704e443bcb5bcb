#!/usr/bin/env python3
"""Generate `schema.rs`, the protobuf schema table used by `protobuf.rs`.

The table is built from two things that kubectl v1.32 itself carries, so that it describes
exactly the wire format and the Go types of Kubernetes v1.32:

* the gzipped `FileDescriptorProto`s that the gogo-generated `generated.pb.go` files register
  (field numbers, types, JSON names, and the gogoproto `nullable` option, which is absent
  exactly when the Go field is a pointer);
* the Go struct tags (`json:"x,omitempty" protobuf:"bytes,1,opt,name=x"`), which say whether a
  field is `omitempty`.

Usage: generate_schema.py /usr/lib/google-cloud-sdk/bin/kubectl.1.32 > schema.rs
"""

import collections
import re
import sys
import zlib

# Go API group of each included proto package (`k8s.io.api.<pkg>.<version>`).
GROUPS = {
    "core": "",
    "apps": "apps",
    "coordination": "coordination.k8s.io",
    "batch": "batch",
    "autoscaling": "autoscaling",
    "policy": "policy",
    "rbac": "rbac.authorization.k8s.io",
    "networking": "networking.k8s.io",
    "scheduling": "scheduling.k8s.io",
    "authentication": "authentication.k8s.io",
}
FILES = [
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/autoscaling/v1/generated.proto",
    "k8s.io/api/autoscaling/v2/generated.proto",
    "k8s.io/api/policy/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
    "k8s.io/api/networking/v1/generated.proto",
    "k8s.io/api/scheduling/v1/generated.proto",
    "k8s.io/api/authentication/v1/generated.proto",
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    "k8s.io/apimachinery/pkg/api/resource/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/schema/generated.proto",
    "k8s.io/apimachinery/pkg/util/intstr/generated.proto",
]
SCALARS = {3: "Int64", 5: "Int32", 8: "Bool", 9: "String", 12: "Bytes"}
# Messages that carry ObjectMeta but are embedded parts of objects, not API kinds.
NOT_KINDS = {"JobTemplateSpec", "PodTemplateSpec", "PersistentVolumeClaimTemplate"}
GO_WIRE = {1: "fixed64", 3: "varint", 5: "varint", 8: "varint", 9: "bytes", 11: "bytes", 12: "bytes"}


def fields_of(buf):
    """Yield (number, wire type, value) of a protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 2:
            n = varint()
            yield num, wt, buf[i : i + n]
            i += n
        elif wt == 1:
            yield num, wt, buf[i : i + 8]
            i += 8
        elif wt == 5:
            yield num, wt, buf[i : i + 4]
            i += 4
        else:
            raise ValueError("unsupported wire type %d" % wt)


def descriptors(binary):
    out = {}
    for m in re.finditer(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00", binary):
        try:
            raw = zlib.decompressobj(31).decompress(binary[m.start() : m.start() + 4_000_000])
        except zlib.error:
            continue
        if raw[:1] != b"\x0a":
            continue
        try:
            name = next(v for n, _, v in fields_of(raw) if n == 1).decode()
        except Exception:
            continue
        if name.endswith(".proto"):
            out[name] = raw
    return out


def struct_tags(binary):
    tags = collections.defaultdict(set)
    # Other keys (patchStrategy, patchMergeKey, ...) may stand between json and protobuf.
    pat = rb'json:"([^"]*)"(?: [A-Za-z]+:"[^"]*")* protobuf:"([a-z0-9]+),(\d+),(opt|rep|req),name=([A-Za-z0-9_]+)'
    for m in re.finditer(pat, binary):
        json = m.group(1).decode().split(",")
        key = (m.group(2).decode(), int(m.group(3)), m.group(4).decode(), m.group(5).decode())
        tags[key].add("omitempty" in json[1:])
    return tags


def messages(raw, package, prefix, out, field=4):
    """Collect the messages (field 4 of a file, field 3 of a message) into `out`."""
    for num, _, msg in fields_of(raw):
        if num != field:
            continue
        name, fields, nested, map_entry = None, [], [], False
        for n, _, v in fields_of(msg):
            if n == 1:
                name = v.decode()
            elif n == 2:
                fields.append(v)
            elif n == 3:
                nested.append(v)
            elif n == 7:
                map_entry = any(o == 7 and val == 1 for o, _, val in fields_of(v))
        full = prefix + name
        parsed = []
        for f in fields:
            d = {"nullable": True, "type_name": None}
            for n, _, v in fields_of(f):
                if n == 1:
                    d["name"] = v.decode()
                elif n == 3:
                    d["number"] = v
                elif n == 4:
                    d["label"] = v
                elif n == 5:
                    d["type"] = v
                elif n == 6:
                    d["type_name"] = v.decode().lstrip(".")
                elif n == 10:
                    d["json"] = v.decode()
                elif n == 8:
                    for o, _, val in fields_of(v):
                        if o == 65001:
                            d["nullable"] = bool(val)
            parsed.append(d)
        out[full] = {"fields": parsed, "map_entry": map_entry, "package": package}
        messages(b"".join(_reencode(3, x) for x in nested), package, full + ".", out, 3)


def _reencode(num, payload):
    key = bytes([num << 3 | 2])
    n, length = len(payload), b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            length += bytes([b | 0x80])
        else:
            length += bytes([b])
            break
    return key + length + payload


def main():
    binary = open(sys.argv[1], "rb").read()
    descs = descriptors(binary)
    tags = struct_tags(binary)
    msgs = {}
    for f in FILES:
        raw = descs[f]
        package = next(v for n, _, v in fields_of(raw) if n == 2).decode()
        messages(raw, package, package + ".", msgs)

    ambiguous = []
    print("// @generated by generate_schema.py from kubectl v1.32; do not edit by hand.")
    print("//! The Kubernetes v1.32 protobuf schema: every message of the API packages")
    print("//! rkube decodes, with the JSON name, pointer-ness and `omitempty` of each field.")
    print()
    print("use super::{Field, Message, Type};")
    print()
    print("/// Every message, sorted by full protobuf name.")
    print("pub(super) static MESSAGES: &[Message] = &[")
    for full in sorted(msgs):
        m = msgs[full]
        print("    Message {")
        print('        name: "%s",' % full)
        print("        map_entry: %s," % str(m["map_entry"]).lower())
        print("        fields: &[")
        for d in sorted(m["fields"], key=lambda d: d["number"]):
            t = d["type"]
            if t == 11:
                target = msgs.get(d["type_name"])
                if target is None:
                    raise SystemExit("missing message " + d["type_name"])
                kind = "Map" if target["map_entry"] else "Message"
                if target["map_entry"]:
                    key_field = next(k for k in target["fields"] if k["number"] == 1)
                    if key_field["type"] != 9:
                        raise SystemExit("map with non-string keys in " + full)
                ty = 'Type::%s("%s")' % (kind, d["type_name"])
            elif t in SCALARS:
                ty = "Type::" + SCALARS[t]
            else:
                raise SystemExit("unsupported type %d in %s" % (t, full))
            repeated = d["label"] == 3
            key = (GO_WIRE[t], d["number"], "rep" if repeated else "opt", d["name"])
            found = tags.get(key, set())
            if len(found) == 1:
                omitempty = next(iter(found))
            else:
                # Not found (map entries) or shared by structs that disagree: treat as
                # omitempty, which loses nothing (Go decodes an absent field as its zero).
                omitempty = True
                if not m["map_entry"] and t != 11 and not d["nullable"] is True:
                    ambiguous.append("%s.%s" % (full, d["name"]))
            print(
                '            Field { number: %d, json: "%s", ty: %s, repeated: %s, pointer: %s, omitempty: %s },'
                % (d["number"], d["json"], ty, str(repeated).lower(), str(d["nullable"]).lower(), str(omitempty).lower())
            )
        print("        ],")
        print("    },")
    print("];")
    print()
    print("/// Every API object kind that can be decoded: (apiVersion, kind, message).")
    print("pub(super) static KINDS: &[(&str, &str, &str)] = &[")
    for full in sorted(msgs):
        m = msgs[full]
        parts = full.split(".")
        if parts[:3] != ["k8s", "io", "api"] or len(parts) != 6:
            continue
        meta = [d for d in m["fields"] if d["name"] == "metadata"]
        if parts[5] in NOT_KINDS:
            continue
        if not meta or meta[0]["type_name"] != "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta":
            continue
        group = GROUPS[parts[3]]
        api_version = (group + "/" if group else "") + parts[4]
        print('    ("%s", "%s", "%s"),' % (api_version, parts[5], full))
    print("];")
    for a in ambiguous:
        print("ambiguous omitempty (treated as omitempty):", a, file=sys.stderr)


if __name__ == "__main__":
    main()
