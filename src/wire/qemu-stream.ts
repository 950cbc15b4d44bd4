/**
 * QEMU migration stream, format version 3 (QEMU 7.2): an incremental parser and a writer.
 *
 * The parser understands the parts vmscatter needs to see (header, configuration, the "ram"
 * iterative sections and their page records) and hands everything from the first device (FULL)
 * section or EOF on to its consumer as an opaque device tail: device sections carry no length
 * and are only meaningful to QEMU's own loader. See notes/qemu.md for the layout.
 *
 * For exact pass-through, every event is delivered while `parser.record` is a view of that
 * record's raw bytes; a proxy that rewrites only some records copies the rest verbatim.
 *
 * The converge channel extends the RAM records with two flags QEMU 7.2 never sets
 * (VmsRamFlag.REF, VmsRamFlag.STORE); they are accepted only with `{ converge: true }` and never
 * reach QEMU: the target side expands them back into standard PAGE records.
 */
import { ErrorCode, StreamError } from '../errors.js';
import { PAGE_SIZE } from '../memory/page.js';

export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;

export const SectionType = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;
export type SectionType = (typeof SectionType)[keyof typeof SectionType];

export const RamFlag = {
  FULL: 0x01,
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
} as const;

/** vmscatter's converge-channel extensions; never sent to QEMU. */
export const VmsRamFlag = {
  /** Page whose content the target already holds: be32 content id instead of 4096 bytes. */
  REF: 0x400,
  /** Combined with PAGE: be32 content id, then the page; the target stores it under that id. */
  STORE: 0x800,
} as const;

const FLAG_MASK = 0xfff;
const TWO32 = 0x1_0000_0000;

export interface RamBlockInfo {
  name: string;
  usedLength: number;
  /** Present only when the stream carries it (x-ignore-shared). */
  guestAddr?: bigint;
}

export interface StreamInfo {
  version: number;
  /** Machine type from the configuration section, or '' when the stream has none. */
  machine: string;
  /** Capability names from "configuration/capabilities", if present. */
  capabilities: string[];
}

/**
 * Events from the parser. All are optional. Buffers passed in are views valid for the duration
 * of the call only (copy what you keep); `parser.record` is the raw record during the call.
 */
export interface StreamHandler {
  preamble?(info: StreamInfo): void;
  /** A section header of the ram section (START carries the idstr, PART/END do not). */
  section?(type: typeof SectionType.START | typeof SectionType.PART | typeof SectionType.END, sectionId: number): void;
  memSize?(blocks: readonly RamBlockInfo[]): void;
  zero?(block: number, offset: number, fill: number, cont: boolean): void;
  /** storeId is the content id of a STORE record, or -1 for a plain PAGE. */
  page?(block: number, offset: number, data: Buffer, cont: boolean, storeId: number): void;
  ref?(block: number, offset: number, contentId: number, cont: boolean): void;
  eos?(): void;
  footer?(sectionId: number): void;
  /** Opaque device state from the first FULL/EOF section on, in arrival order. */
  deviceTail?(chunk: Buffer): void;
}

export interface ParserOptions {
  /** Accept vmscatter's REF/STORE records (converge channel only). */
  converge?: boolean;
}

const State = {
  HEADER: 0,
  TOP: 2,
  RAM_RECORDS: 3,
  FOOTER_OR_TOP: 4,
  TAIL: 5,
  FAILED: 6,
} as const;
type State = (typeof State)[keyof typeof State];

/** Bytes of a new chunk joined to a record that straddles chunks (a page record and then some). */
const SPLICE_BYTES = 8192;

/** Marker thrown internally when more bytes are needed; never escapes push(). */
const NEED_MORE = Symbol('need-more');

/**
 * Incremental parser: feed chunks with push(), call end() when the input ends. Errors are
 * StreamError with a code and the absolute byte offset; after one, the parser stays failed.
 */
export class StreamParser {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Absolute stream offset of buf[0]. */
  private base = 0;
  private state: State = State.HEADER;
  private failure: StreamError | undefined;
  private blocks: RamBlockInfo[] = [];
  private blockByName = new Map<string, number>();
  private lastBlock = -1;
  private ramSectionId = -1;
  private ignoreShared = false;
  private sawMemSize = false;
  private recStart = 0;
  /** While completing a record that straddled two chunks: stop at the first boundary past this. */
  private stopAt = Infinity;
  private readonly converge: boolean;
  /** Information from the header and configuration, once parsed. */
  info: StreamInfo = { version: 0, machine: '', capabilities: [] };

  constructor(
    private readonly handler: StreamHandler,
    opts: ParserOptions = {},
  ) {
    this.converge = opts.converge === true;
  }

  /** Raw bytes of the record being delivered (valid during a handler call). */
  get record(): Buffer {
    return this.buf.subarray(this.recStart, this.pos);
  }

  /** Bytes consumed so far (absolute offset of the next unparsed byte). */
  get offset(): number {
    return this.base + this.pos;
  }

  get inDeviceTail(): boolean {
    return this.state === State.TAIL;
  }

  get ramBlocks(): readonly RamBlockInfo[] {
    return this.blocks;
  }

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    if (chunk.length === 0) return;
    if (this.state === State.TAIL) {
      this.base += chunk.length;
      this.handler.deviceTail?.(chunk);
      return;
    }
    const restLen = this.buf.length - this.pos;
    if (restLen === 0) {
      this.base += this.buf.length;
      this.buf = chunk;
      this.pos = 0;
      this.parse();
      return;
    }
    // A record straddles the chunk boundary. Complete it from a small splice of the chunk's head
    // rather than copying the whole chunk, then go on parsing in the chunk itself.
    const rest = this.buf.subarray(this.pos);
    this.base += this.pos;
    const head = Math.min(chunk.length, SPLICE_BYTES);
    this.buf = Buffer.concat([rest, chunk.subarray(0, head)], restLen + head);
    this.pos = 0;
    if (head < chunk.length) {
      this.stopAt = restLen;
      const done = this.parse();
      this.stopAt = Infinity;
      if (this.failure) return;
      if (!done) {
        // The straddling record is larger than the splice (e.g. a long MEM_SIZE): join it all.
        this.buf = Buffer.concat([this.buf.subarray(0, restLen), chunk], restLen + chunk.length);
        this.parse();
        return;
      }
      // Continue in the chunk itself from where the splice left off.
      const at = this.pos - restLen;
      this.base += restLen;
      this.buf = chunk;
      this.pos = at;
    }
    this.parse();
  }

  /** Runs the state machine; false when it stopped for want of bytes before `stopAt`. */
  private parse(): boolean {
    try {
      this.run();
      return true;
    } catch (e) {
      if (e === NEED_MORE) {
        this.pos = this.recStart;
        return false;
      }
      this.fail(e);
    }
  }

  /** The input has ended. Throws STREAM_TRUNCATED unless the device tail has begun. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.state === State.TAIL) return;
    const what =
      this.state === State.HEADER ? 'the stream header' : this.state === State.RAM_RECORDS ? 'the rest of a RAM record or EOS' : 'more sections before the device state';
    this.fail(
      new StreamError(ErrorCode.STREAM_TRUNCATED, this.offset, `stream ended early: expected ${what}; ${this.buf.length - this.pos} unparsed bytes left`),
    );
  }

  private fail(e: unknown): never {
    this.state = State.FAILED;
    this.failure =
      e instanceof StreamError
        ? e
        : new StreamError(ErrorCode.STREAM_MALFORMED, this.offset, `internal parser error: ${String(e)}`, { cause: e });
    throw this.failure;
  }

  private malformed(msg: string, at = this.base + this.recStart): never {
    throw new StreamError(ErrorCode.STREAM_MALFORMED, at, msg);
  }

  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw NEED_MORE;
  }

  private u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  private be32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  private str(): string {
    const len = this.u8();
    this.need(len);
    const s = this.buf.toString('latin1', this.pos, this.pos + len);
    this.pos += len;
    return s;
  }

  private run(): void {
    for (;;) {
      this.recStart = this.pos;
      if (this.pos >= this.buf.length || this.pos >= this.stopAt) return;
      switch (this.state) {
        case State.HEADER:
          // Header and configuration form one record, so that `record` covers both.
          this.parseHeader();
          this.need(1);
          if (this.buf[this.pos] === SectionType.CONFIGURATION) this.parseConfiguration();
          this.handler.preamble?.(this.info);
          this.state = State.TOP;
          break;
        case State.TOP:
          this.parseTop();
          break;
        case State.TAIL: {
          const tail = this.buf.subarray(this.pos);
          this.pos = this.buf.length;
          this.handler.deviceTail?.(tail);
          return;
        }
        case State.RAM_RECORDS:
          this.parseRamRecord();
          break;
        case State.FOOTER_OR_TOP:
          if (this.buf[this.pos] === SectionType.FOOTER) {
            this.pos++;
            const id = this.be32();
            if (id !== this.ramSectionId) this.malformed(`section footer names section ${id}, expected ${this.ramSectionId}`);
            this.handler.footer?.(id);
          }
          this.state = State.TOP;
          break;
        default:
          return;
      }
    }
  }

  private parseHeader(): void {
    const magic = this.be32();
    const version = this.be32();
    if (magic !== QEMU_VM_FILE_MAGIC)
      this.malformed(`expected magic 0x5145564d ("QEVM"), got 0x${magic.toString(16).padStart(8, '0')}: not a QEMU migration stream`, this.base);
    if (version !== QEMU_VM_FILE_VERSION)
      throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + 4, `stream version ${version}; only version 3 is supported`);
    this.info.version = version;
  }

  private parseConfiguration(): void {
    this.pos++; // 0x07
    const len = this.be32();
    if (len > 256) this.malformed(`configuration machine name of ${len} bytes; expected at most 256`);
    this.need(len);
    const machine = this.buf.toString('latin1', this.pos, this.pos + len);
    this.pos += len;
    const caps: string[] = [];
    // Subsections follow without a terminator: the loader peeks for 0x05. We must see the byte
    // after each one to know whether another follows.
    for (;;) {
      this.need(1);
      if (this.buf[this.pos] !== SectionType.SUBSECTION) break;
      this.pos++;
      const name = this.str();
      this.be32(); // subsection version
      if (name === 'configuration/target-page-bits') {
        const bits = this.be32();
        if (bits !== 12) throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.offset - 4, `target page bits ${bits}; only 4 KiB pages are supported`);
      } else if (name === 'configuration/capabilities') {
        const n = this.be32();
        if (n > 256) this.malformed(`configuration lists ${n} capabilities; expected at most 256`);
        for (let i = 0; i < n; i++) caps.push(this.str());
      } else if (name === 'configuration/uuid') {
        this.need(16);
        this.pos += 16;
      } else {
        throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, `unknown configuration subsection "${name}"`);
      }
    }
    this.info.machine = machine;
    this.info.capabilities = caps;
    this.ignoreShared = caps.includes('x-ignore-shared');
  }

  private parseTop(): void {
    const type = this.buf[this.pos]!;
    switch (type) {
      case SectionType.START: {
        this.pos++;
        const id = this.be32();
        const idstr = this.str();
        this.be32(); // instance id
        const version = this.be32();
        if (idstr !== 'ram')
          throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, `iterative section "${idstr}" is not supported; only "ram" (disable block migration and dirty-bitmap migration)`);
        if (this.ramSectionId >= 0) this.malformed(`second START for "ram" (section ${id})`);
        if (version !== 4) throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, `"ram" section version ${version}; expected 4`);
        this.ramSectionId = id;
        this.handler.section?.(SectionType.START, id);
        this.state = State.RAM_RECORDS;
        return;
      }
      case SectionType.PART:
      case SectionType.END: {
        this.pos++;
        const id = this.be32();
        if (id !== this.ramSectionId) this.malformed(`section ${type === 2 ? 'PART' : 'END'} for section ${id}; only the ram section ${this.ramSectionId} was started`);
        this.handler.section?.(type, id);
        this.state = State.RAM_RECORDS;
        return;
      }
      case SectionType.FULL:
      case SectionType.EOF:
      case SectionType.VMDESCRIPTION:
        this.state = State.TAIL;
        return;
      case SectionType.COMMAND:
        throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.pos, 'COMMAND section (postcopy or a return path) is not supported in precopy streams');
      default:
        this.malformed(`unknown section type 0x${type.toString(16)}; expected START, PART, END, FULL or EOF`, this.base + this.pos);
    }
  }

  private parseRamRecord(): void {
    this.need(8);
    const hi = this.buf.readUInt32BE(this.pos);
    const lo = this.buf.readUInt32BE(this.pos + 4);
    this.pos += 8;
    const flags = lo & FLAG_MASK;
    const addr = hi * TWO32 + (lo - flags);
    const cont = (flags & RamFlag.CONTINUE) !== 0;
    const kind = flags & ~RamFlag.CONTINUE;
    switch (kind) {
      case RamFlag.EOS:
        if (cont) this.malformed('EOS record with CONTINUE flag');
        this.handler.eos?.();
        this.state = State.FOOTER_OR_TOP;
        return;
      case RamFlag.MEM_SIZE:
        this.parseMemSize(addr);
        return;
      case RamFlag.ZERO: {
        const block = this.blockOf(cont);
        const fill = this.u8();
        this.checkOffset(block, addr);
        this.handler.zero?.(block, addr, fill, cont);
        return;
      }
      case RamFlag.PAGE: {
        const block = this.blockOf(cont);
        this.need(PAGE_SIZE);
        this.checkOffset(block, addr);
        const data = this.buf.subarray(this.pos, this.pos + PAGE_SIZE);
        this.pos += PAGE_SIZE;
        this.handler.page?.(block, addr, data, cont, -1);
        return;
      }
      case RamFlag.PAGE | VmsRamFlag.STORE:
      case VmsRamFlag.REF: {
        if (!this.converge) this.malformed(`RAM record flags 0x${flags.toString(16)} are not valid in a QEMU stream`);
        const block = this.blockOf(cont);
        const id = this.be32();
        if (id > 0x7fffffff) this.malformed(`content id ${id} out of range`);
        this.checkOffset(block, addr);
        if (kind === VmsRamFlag.REF) {
          this.handler.ref?.(block, addr, id, cont);
        } else {
          this.need(PAGE_SIZE);
          const data = this.buf.subarray(this.pos, this.pos + PAGE_SIZE);
          this.pos += PAGE_SIZE;
          this.handler.page?.(block, addr, data, cont, id);
        }
        return;
      }
      default:
        if (kind & RamFlag.XBZRLE)
          throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, 'XBZRLE page record: disable the xbzrle migration capability on the source');
        if (kind & RamFlag.COMPRESS_PAGE)
          throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, 'COMPRESS_PAGE record: disable the compress migration capability on the source');
        if (kind & RamFlag.HOOK)
          throw new StreamError(ErrorCode.STREAM_UNSUPPORTED, this.base + this.recStart, 'HOOK record (RDMA migration) is not supported');
        this.malformed(`unknown RAM record flags 0x${flags.toString(16)}; expected ZERO, PAGE, MEM_SIZE or EOS`);
    }
  }

  private parseMemSize(total: number): void {
    if (this.sawMemSize) this.malformed('second MEM_SIZE record');
    const blocks: RamBlockInfo[] = [];
    let left = total;
    while (left > 0) {
      const name = this.str();
      this.need(8);
      const len = this.buf.readUInt32BE(this.pos) * TWO32 + this.buf.readUInt32BE(this.pos + 4);
      this.pos += 8;
      const info: RamBlockInfo = { name, usedLength: len };
      if (this.ignoreShared) {
        this.need(8);
        info.guestAddr = this.buf.readBigUInt64BE(this.pos);
        this.pos += 8;
      }
      if (len === 0 || len > left) this.malformed(`RAM block "${name}" of ${len} bytes does not fit the announced total of ${total}`);
      left -= len;
      blocks.push(info);
      if (blocks.length > 4096) this.malformed('more than 4096 RAM blocks');
    }
    this.sawMemSize = true;
    this.blocks = blocks;
    this.blockByName = new Map(blocks.map((b, i) => [b.name, i]));
    this.handler.memSize?.(blocks);
  }

  private blockOf(cont: boolean): number {
    if (!this.sawMemSize) this.malformed('page record before MEM_SIZE');
    if (cont) {
      if (this.lastBlock < 0) this.malformed('CONTINUE flag on the first page record');
      return this.lastBlock;
    }
    const name = this.str();
    const b = this.blockByName.get(name);
    if (b === undefined) this.malformed(`page record for unknown RAM block "${name}"`);
    this.lastBlock = b;
    return b;
  }

  private checkOffset(block: number, addr: number): void {
    const b = this.blocks[block]!;
    if (addr >= b.usedLength) this.malformed(`page offset 0x${addr.toString(16)} beyond RAM block "${b.name}" of ${b.usedLength} bytes`);
  }
}

/**
 * Writer: records go into a preallocated buffer that is handed to `sink` when full or on
 * flush(). A handed-off chunk is never reused, so a sink may keep it (socket.write does).
 */
export class StreamWriter {
  private out: Buffer;
  private n = 0;
  private written = 0;

  constructor(
    private readonly sink: (chunk: Buffer) => void,
    private readonly chunkSize = 256 * 1024,
  ) {
    this.out = Buffer.allocUnsafe(chunkSize);
  }

  /** Bytes written so far, including what is still buffered. */
  get bytesWritten(): number {
    return this.written + this.n;
  }

  flush(): void {
    if (this.n === 0) return;
    const chunk = this.out.subarray(0, this.n);
    this.written += this.n;
    // Go on filling the rest of the buffer while a good part is left: flushes of short chunks
    // are frequent (the converge target flushes after every frame), and a fresh 256 KiB per flush made
    // the garbage collector the busiest part of it. Handed-out bytes are never written again.
    this.out = this.out.length - this.n >= 16 * 1024 ? this.out.subarray(this.n) : Buffer.allocUnsafe(this.chunkSize);
    this.n = 0;
    this.sink(chunk);
  }

  /** Bytes verbatim. Large buffers are handed to the sink without a copy: do not modify them later. */
  raw(bytes: Buffer): void {
    if (bytes.length >= this.chunkSize >>> 1) {
      this.flush();
      this.written += bytes.length;
      this.sink(bytes);
      return;
    }
    this.room(bytes.length);
    bytes.copy(this.out, this.n);
    this.n += bytes.length;
  }

  header(): void {
    this.room(8);
    this.out.writeUInt32BE(QEMU_VM_FILE_MAGIC, this.n);
    this.out.writeUInt32BE(QEMU_VM_FILE_VERSION, this.n + 4);
    this.n += 8;
  }

  /** CONFIGURATION section with the machine type and no subsections. */
  configuration(machine: string): void {
    const len = Buffer.byteLength(machine, 'latin1');
    this.room(5 + len);
    this.out[this.n++] = SectionType.CONFIGURATION;
    this.out.writeUInt32BE(len, this.n);
    this.n += 4;
    this.n += this.out.write(machine, this.n, 'latin1');
  }

  sectionStart(type: typeof SectionType.START | typeof SectionType.FULL, sectionId: number, idstr: string, instanceId: number, versionId: number): void {
    this.room(14 + idstr.length);
    this.out[this.n++] = type;
    this.out.writeUInt32BE(sectionId, this.n);
    this.n += 4;
    this.putStr(idstr);
    this.out.writeUInt32BE(instanceId, this.n);
    this.out.writeUInt32BE(versionId, this.n + 4);
    this.n += 8;
  }

  sectionPart(type: typeof SectionType.PART | typeof SectionType.END, sectionId: number): void {
    this.room(5);
    this.out[this.n++] = type;
    this.out.writeUInt32BE(sectionId, this.n);
    this.n += 4;
  }

  footer(sectionId: number): void {
    this.room(5);
    this.out[this.n++] = SectionType.FOOTER;
    this.out.writeUInt32BE(sectionId, this.n);
    this.n += 4;
  }

  memSize(blocks: readonly RamBlockInfo[]): void {
    let total = 0;
    let size = 8;
    for (const b of blocks) {
      total += b.usedLength;
      size += 1 + b.name.length + 8 + (b.guestAddr === undefined ? 0 : 8);
    }
    this.room(size);
    this.recordHeader(total, RamFlag.MEM_SIZE);
    for (const b of blocks) {
      this.putStr(b.name);
      this.putBe64(b.usedLength);
      if (b.guestAddr !== undefined) {
        this.out.writeBigUInt64BE(b.guestAddr, this.n);
        this.n += 8;
      }
    }
  }

  zero(block: string, offset: number, fill: number, cont: boolean): void {
    this.room(9 + (cont ? 0 : 1 + block.length) + 1);
    this.pageHeader(block, offset, RamFlag.ZERO, cont);
    this.out[this.n++] = fill;
  }

  page(block: string, offset: number, data: Buffer, dataOff: number, cont: boolean): void {
    this.room(9 + (cont ? 0 : 1 + block.length) + PAGE_SIZE);
    this.pageHeader(block, offset, RamFlag.PAGE, cont);
    data.copy(this.out, this.n, dataOff, dataOff + PAGE_SIZE);
    this.n += PAGE_SIZE;
  }

  /** Converge extension: a page the target stores under `contentId`. */
  storePage(block: string, offset: number, contentId: number, data: Buffer, dataOff: number, cont: boolean): void {
    this.room(9 + (cont ? 0 : 1 + block.length) + 4 + PAGE_SIZE);
    this.pageHeader(block, offset, RamFlag.PAGE | VmsRamFlag.STORE, cont);
    this.out.writeUInt32BE(contentId, this.n);
    this.n += 4;
    data.copy(this.out, this.n, dataOff, dataOff + PAGE_SIZE);
    this.n += PAGE_SIZE;
  }

  /** Converge extension: a reference to a content the target holds. */
  ref(block: string, offset: number, contentId: number, cont: boolean): void {
    this.room(9 + (cont ? 0 : 1 + block.length) + 4);
    this.pageHeader(block, offset, VmsRamFlag.REF, cont);
    this.out.writeUInt32BE(contentId, this.n);
    this.n += 4;
  }

  eos(): void {
    this.room(8);
    this.recordHeader(0, RamFlag.EOS);
  }

  eof(): void {
    this.room(1);
    this.out[this.n++] = SectionType.EOF;
  }

  private pageHeader(block: string, offset: number, flags: number, cont: boolean): void {
    this.recordHeader(offset, cont ? flags | RamFlag.CONTINUE : flags);
    if (!cont) this.putStr(block);
  }

  private recordHeader(addr: number, flags: number): void {
    const hi = Math.floor(addr / TWO32);
    const lo = (addr - hi * TWO32) | flags;
    this.out.writeUInt32BE(hi, this.n);
    this.out.writeUInt32BE(lo >>> 0, this.n + 4);
    this.n += 8;
  }

  private putBe64(v: number): void {
    const hi = Math.floor(v / TWO32);
    this.out.writeUInt32BE(hi, this.n);
    this.out.writeUInt32BE(v - hi * TWO32, this.n + 4);
    this.n += 8;
  }

  private putStr(s: string): void {
    if (s.length > 255) throw new RangeError(`idstr "${s.slice(0, 32)}..." longer than 255 bytes`);
    this.out[this.n++] = s.length;
    this.n += this.out.write(s, this.n, 'latin1');
  }

  private room(bytes: number): void {
    if (this.n + bytes > this.out.length) {
      this.flush();
      if (bytes > this.out.length) this.out = Buffer.allocUnsafe(bytes);
    }
  }
}
