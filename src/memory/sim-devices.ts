/**
 * The device state of a simulated VM: what follows the RAM in a stream, from the first FULL
 * section to the end. Written by the simulated source, checked by the simulated target, which
 * knows these devices as QEMU knows its own (device sections carry no length: only the loader's
 * schema says where one ends). Everything in between (the converge proxy) treats it as opaque.
 *
 * Layout, as QEMU: per device FULL(0x04) be32 section_id, u8 len + idstr, be32 instance_id,
 * be32 version_id, body, footer 0x7E be32 section_id; then EOF (0x00); then VMDESCRIPTION (0x06,
 * be32 length, JSON). A simulated body is deterministic bytes from the VM seed and its run
 * state, ending in a be32 checksum so the target can tell a damaged tail (a real loader would
 * find damage through implausible field values; the simulator has none).
 */
import { ErrorCode, StreamError } from '../errors.js';
import { SectionType, StreamWriter } from '../wire/qemu-stream.js';
import { fmix32, type SimVm } from './sim-vm.js';

export interface SimDevice {
  idstr: string;
  sectionId: number;
  instanceId: number;
  versionId: number;
  /** Body bytes, including the trailing 4-byte checksum. */
  bodySize: number;
}

/** Section ids as QEMU assigns them by registration order ("ram" is 2). */
export const SIM_DEVICES: readonly SimDevice[] = Object.freeze([
  { idstr: 'timer', sectionId: 0, instanceId: 0, versionId: 2, bodySize: 28 },
  { idstr: 'cpu_common', sectionId: 3, instanceId: 0, versionId: 1, bodySize: 12 },
  { idstr: 'cpu', sectionId: 4, instanceId: 0, versionId: 12, bodySize: 1536 },
  { idstr: 'apic', sectionId: 5, instanceId: 0, versionId: 3, bodySize: 128 },
  { idstr: 'mc146818rtc', sectionId: 6, instanceId: 0, versionId: 3, bodySize: 64 },
]);

export interface SimDeviceSection {
  idstr: string;
  sectionId: number;
  instanceId: number;
  versionId: number;
  body: Buffer;
}

export interface SimDeviceState {
  devices: SimDeviceSection[];
  /** The VMDESCRIPTION JSON, parsed, or undefined when the stream had none. */
  vmDescription: unknown;
}

function checksum(idstr: string, body: Buffer, end: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < idstr.length; i++) h = Math.imul(h ^ idstr.charCodeAt(i), 0x01000193);
  for (let i = 0; i < end; i++) h = Math.imul(h ^ body[i]!, 0x01000193);
  return h >>> 0;
}

/** The VMDESCRIPTION JSON, in QEMU's shape. */
function vmDescription(): string {
  return JSON.stringify({
    page_size: 4096,
    devices: SIM_DEVICES.map((d) => ({
      name: d.idstr,
      instance_id: d.instanceId,
      vmsd_name: d.idstr,
      version: d.versionId,
      fields: [
        { name: 'state', type: 'buffer', size: d.bodySize - 4 },
        { name: 'checksum', type: 'uint32', size: 4 },
      ],
    })),
  });
}

/**
 * The device tail of `vm` as it is now (call it with the VM stopped): FULL sections, EOF,
 * VMDESCRIPTION. Bodies depend on the VM seed and on how many writes the guest made, so two VMs,
 * or two runs of one VM that ran differently, differ.
 */
export function buildSimDeviceTail(vm: SimVm): Buffer {
  const parts: Buffer[] = [];
  const w = new StreamWriter((c) => parts.push(c), 8192);
  const seedLo = vm.spec.seed >>> 0;
  const seedHi = Math.floor(vm.spec.seed / 0x1_0000_0000) >>> 0;
  const run = vm.writeCount;
  for (let i = 0; i < SIM_DEVICES.length; i++) {
    const d = SIM_DEVICES[i]!;
    const body = Buffer.alloc(d.bodySize);
    let h = fmix32(seedLo ^ fmix32(seedHi ^ fmix32(i + 0x51ed270b)));
    h = fmix32(h ^ (run >>> 0)) ^ fmix32(Math.floor(run / 0x1_0000_0000) + 0x2f);
    for (let o = 0; o + 4 <= d.bodySize - 4; o += 4) {
      h = fmix32(h + 0x6d2b79f5);
      body.writeUInt32BE(h >>> 0, o);
    }
    body.writeUInt32BE(checksum(d.idstr, body, d.bodySize - 4), d.bodySize - 4);
    w.sectionStart(SectionType.FULL, d.sectionId, d.idstr, d.instanceId, d.versionId);
    w.raw(body);
    w.footer(d.sectionId);
  }
  w.eof();
  const json = Buffer.from(vmDescription(), 'utf8');
  const hdr = Buffer.alloc(5);
  hdr[0] = SectionType.VMDESCRIPTION;
  hdr.writeUInt32BE(json.length, 1);
  w.raw(hdr);
  w.raw(json);
  w.flush();
  return Buffer.concat(parts);
}

/**
 * Check a complete device tail and split it into device sections. Throws StreamError:
 * STREAM_TRUNCATED when it ends early, STREAM_MALFORMED on anything a loader would reject
 * (unknown or missing device, wrong version, bad footer, bad checksum, bytes after the end).
 * `base` is the tail's offset in the stream, for error messages.
 */
export function parseSimDeviceTail(tail: Buffer, base = 0): SimDeviceState {
  let pos = 0;
  const truncated = (what: string): never => {
    throw new StreamError(ErrorCode.STREAM_TRUNCATED, base + tail.length, `device state ended early: expected ${what}; the stream was cut before the source finished`);
  };
  const malformed = (msg: string, at = pos): never => {
    throw new StreamError(ErrorCode.STREAM_MALFORMED, base + at, `device state: ${msg}`);
  };
  const need = (n: number, what: string): void => {
    if (pos + n > tail.length) truncated(what);
  };
  const devices: SimDeviceSection[] = [];
  for (const d of SIM_DEVICES) {
    need(1, `the FULL section of "${d.idstr}"`);
    const type = tail[pos]!;
    if (type === SectionType.EOF) malformed(`EOF before the state of device "${d.idstr}"; a VM cannot resume without it`);
    if (type !== SectionType.FULL) malformed(`section type 0x${type.toString(16)} where the FULL section of "${d.idstr}" belongs`);
    const start = pos;
    need(6, `the section header of "${d.idstr}"`);
    const sectionId = tail.readUInt32BE(pos + 1);
    const len = tail[pos + 5]!;
    pos += 6;
    need(len + 8, `the section header of "${d.idstr}"`);
    const idstr = tail.toString('latin1', pos, pos + len);
    pos += len;
    const instanceId = tail.readUInt32BE(pos);
    const versionId = tail.readUInt32BE(pos + 4);
    pos += 8;
    if (idstr !== d.idstr) malformed(`unknown or misplaced device "${idstr}"; expected "${d.idstr}"`, start);
    if (instanceId !== d.instanceId || versionId !== d.versionId)
      malformed(`device "${idstr}" instance ${instanceId} version ${versionId}; expected instance ${d.instanceId} version ${d.versionId}`, start);
    need(d.bodySize, `the ${d.bodySize}-byte state of "${d.idstr}"`);
    const body = Buffer.from(tail.subarray(pos, pos + d.bodySize));
    if (body.readUInt32BE(d.bodySize - 4) !== checksum(d.idstr, body, d.bodySize - 4)) malformed(`state of "${d.idstr}" fails its checksum: the tail was damaged`);
    pos += d.bodySize;
    need(5, `the footer of "${d.idstr}"`);
    if (tail[pos] !== SectionType.FOOTER || tail.readUInt32BE(pos + 1) !== sectionId) malformed(`missing or wrong footer after device "${d.idstr}" (section ${sectionId})`);
    pos += 5;
    devices.push({ idstr, sectionId, instanceId, versionId, body });
  }
  need(1, 'EOF after the device sections');
  if (tail[pos] !== SectionType.EOF) malformed(`byte 0x${tail[pos]!.toString(16)} after the last device; expected EOF (0x00)`);
  pos++;
  let vmDesc: unknown;
  if (pos < tail.length) {
    if (tail[pos] !== SectionType.VMDESCRIPTION) malformed(`byte 0x${tail[pos]!.toString(16)} after EOF; expected VMDESCRIPTION (0x06) or the end`);
    need(5, 'the VMDESCRIPTION length');
    const len = tail.readUInt32BE(pos + 1);
    pos += 5;
    need(len, `${len} bytes of VMDESCRIPTION JSON`);
    try {
      vmDesc = JSON.parse(tail.toString('utf8', pos, pos + len));
    } catch {
      malformed('VMDESCRIPTION is not valid JSON');
    }
    pos += len;
    if (pos !== tail.length) malformed(`${tail.length - pos} bytes after VMDESCRIPTION; the stream should have ended`);
  }
  return { devices, vmDescription: vmDesc };
}
