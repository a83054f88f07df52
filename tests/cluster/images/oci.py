#!/usr/bin/env python3
"""Writes a one-layer OCI image layout as a tar, without a container engine.

    oci.py --out IMAGE.tar --name REF [--name REF...] [--config JSON]
           [--file SRC:DST[:MODE]]... [--link DST:TARGET]... [--dir DST:MODE[:UID]]...
           [--text DST:MODE:CONTENT]...

The layer is reproducible: sorted entries, mtime 0, owner root unless a --dir
says otherwise, so the same inputs always give the same digests. Prints the
manifest digest on stdout; `ctr images import` reads the tar, each --name
becomes an image of that name (annotation io.containerd.image.name).
"""
import argparse, gzip, hashlib, io, json, os, sys, tarfile

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--name", action="append", required=True)
p.add_argument("--config", default="{}", help="the image config's `config` object (User, Entrypoint, ...)")
p.add_argument("--label", action="append", default=[], help="KEY=VALUE, an image label")
p.add_argument("--file", action="append", default=[])
p.add_argument("--link", action="append", default=[])
p.add_argument("--dir", action="append", default=[])
p.add_argument("--text", action="append", default=[])
a = p.parse_args()

entries = {}  # path in the image -> (TarInfo, bytes or None)

def parents(path):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in entries:
            ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755
            entries[d] = (ti, None)

def add(path, ti, data=None):
    path = path.strip("/")
    parents(path)
    ti.name = path; ti.mtime = 0; ti.uname = ti.gname = ""
    entries[path] = (ti, data)

for spec in a.dir:
    path, mode, *uid = spec.split(":")
    ti = tarfile.TarInfo(); ti.type = tarfile.DIRTYPE; ti.mode = int(mode, 8)
    if uid: ti.uid = ti.gid = int(uid[0])
    add(path, ti)
for spec in a.file:
    src, dst, *mode = spec.split(":")
    data = open(src, "rb").read()
    ti = tarfile.TarInfo(); ti.size = len(data)
    ti.mode = int(mode[0], 8) if mode else (os.stat(src).st_mode & 0o7777)
    add(dst, ti, data)
for spec in a.text:
    dst, mode, content = spec.split(":", 2)
    data = content.encode()
    ti = tarfile.TarInfo(); ti.size = len(data); ti.mode = int(mode, 8)
    add(dst, ti, data)
for spec in a.link:
    dst, target = spec.split(":", 1)
    ti = tarfile.TarInfo(); ti.type = tarfile.SYMTYPE; ti.linkname = target; ti.mode = 0o777
    add(dst, ti)

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for path in sorted(entries):
        ti, data = entries[path]
        t.addfile(ti, io.BytesIO(data) if data is not None else None)
layer_tar = raw.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
layer = gzip.compress(layer_tar, compresslevel=6, mtime=0)

def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data

labels = dict(l.split("=", 1) for l in a.label)
cfg_obj = json.loads(a.config)
if labels:
    cfg_obj["Labels"] = labels
config = json.dumps({
    "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": cfg_obj,
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/cluster/images/oci.py"}],
}, sort_keys=True).encode()
layer_d, _ = blob(layer)
config_d, _ = blob(config)
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": len(layer)}],
}, sort_keys=True).encode()
manifest_d, _ = blob(manifest)
index = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d, "size": len(manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": n, "org.opencontainers.image.ref.name": n.rsplit(":", 1)[-1]},
    } for n in a.name],
}, sort_keys=True).encode()

tmp = a.out + ".tmp"
with tarfile.open(tmp, "w") as out:
    def put(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); ti.mode = 0o644; ti.mtime = 0
        out.addfile(ti, io.BytesIO(data))
    put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    put("index.json", index)
    for d, data in ((config_d, config), (layer_d, layer), (manifest_d, manifest)):
        put("blobs/sha256/" + d.split(":")[1], data)
os.replace(tmp, a.out)
print(manifest_d)
