// Verification in the browser, trusting nothing but the log's public key: a C2SP signed note
// (Ed25519, WebCrypto), the tlog-checkpoint it signs, and an RFC 9162 inclusion proof (SHA-256,
// WebCrypto). "Verified" on screen is the result of this code, never something the host said.

const enc = new TextEncoder();

export function b64decode(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** RFC 6962 leaf hash: SHA-256(0x00 || entry). */
export function leafHash(entry) {
  return sha256(concat(new Uint8Array([0]), entry));
}

function nodeHash(left, right) {
  return sha256(concat(new Uint8Array([1]), left, right));
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** RFC 9162 section 2.1.3.2: does `proof` lead from leaf `index` to `root` in a tree of `size`? */
export async function verifyInclusion(index, size, leaf, proof, root) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn > sn || leaf.length !== 32 || root.length !== 32) return false;
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32 || sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equal(r, root);
}

/** A verifier key `<name>+<hex id>+<base64(0x01 || key)>`. */
export async function parseVerifierKey(vkey) {
  const parts = vkey.trim().split("+");
  if (parts.length < 3) throw new Error("not a verifier key");
  const name = parts[0];
  const id = parts[1];
  const blob = b64decode(parts.slice(2).join("+"));
  if (blob.length !== 33 || blob[0] !== 1) throw new Error("not an Ed25519 verifier key");
  const keyId = hex((await sha256(concat(enc.encode(name + "\n"), blob))).slice(0, 4));
  if (keyId !== id) throw new Error("the key id does not match the key");
  const key = await crypto.subtle.importKey("raw", blob.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, id, key };
}

/**
 * Opens a signed checkpoint with the log's key: checks the signature and reads origin, size and
 * root. Throws with the reason when it does not verify.
 */
export async function openCheckpoint(note, vkey) {
  const verifier = await parseVerifierKey(vkey);
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("not a signed note");
  const text = note.slice(0, split + 1);
  const lines = note.slice(split + 2).split("\n").filter((l) => l);
  let checked = false;
  for (const line of lines) {
    const match = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!match || match[1] !== verifier.name) continue;
    const blob = b64decode(match[2]);
    if (hex(blob.slice(0, 4)) !== verifier.id) continue;
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, blob.slice(4), enc.encode(text));
    if (!ok) throw new Error("the checkpoint's signature does not verify");
    checked = true;
  }
  if (!checked) throw new Error("the checkpoint is not signed by the log's key");
  const [origin, size, root] = text.split("\n");
  if (origin !== verifier.name) throw new Error("the checkpoint is for another log");
  if (!/^\d+$/.test(size)) throw new Error("the checkpoint has no tree size");
  return { origin, size: Number(size), root: b64decode(root) };
}

/**
 * Verifies one entry end to end: the checkpoint's signature, then the entry's inclusion proof
 * against its root. Resolves to `{ok, reason, checkpoint}`.
 */
export async function verifyEntry({ index, bytes, proof, note, vkey }) {
  try {
    const checkpoint = await openCheckpoint(note, vkey);
    const leaf = await leafHash(bytes);
    const ok = await verifyInclusion(index, checkpoint.size, leaf, proof, checkpoint.root);
    return {
      ok,
      checkpoint,
      reason: ok ? "" : "the entry's bytes and the proof do not lead to the signed root: the stored entry was changed",
    };
  } catch (e) {
    return { ok: false, reason: e.message };
  }
}
