/**
 * Runs one scatter across a namespace topology: receivers as child processes in their
 * namespaces (src/transport/receiver-main.ts), then the sender in its namespace
 * (src/transport/sender-main.ts); collects their JSON outputs.
 *
 * Debugging aids: VMSCATTER_DEBUG=1 forwards the children's stderr; VMSCATTER_CHILD_NODE_ARGS
 * adds node flags to every child (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ReceiverOutput } from '../../src/transport/scatter-child.js';
import { sessionFromPlan, sessionToJson, type ScatterPlan, type ScatterSession } from '../../src/transport/scatter-session.js';
import type { SenderStats, TargetReport } from '../../src/transport/multicast-sender.js';
import { NODE_FLAGS } from '../../src/node-flags.js';
import { receiverAddr, SENDER_ADDR, type Topology } from './topology.js';

export interface NetnsScatterOptions {
  plan: ScatterPlan;
  seed: number;
  mtu: number;
  /** Sender skips every K-th content id (contentBytes undefined), 0 = none. */
  skipEvery?: number;
  rateBytesPerSec?: number;
  auth?: boolean;
  digests?: boolean;
  /** Whole-run limit (default 60 s). */
  timeoutMs?: number;
  igmp?: 'auto' | 'on' | 'off';
  job?: number;
  pagesPerDatagram?: number;
  /** UDP GSO on the sender and GRO on the receivers (default true). */
  udpOffload?: boolean;
  /** The sender's flow window (bytes, 0: off; default the sender's). */
  flowWindowBytes?: number;
}

export interface SenderOutput {
  runStartedAt: number;
  runEndedAt: number;
  sender: SenderStats;
  targets: Array<Omit<TargetReport, 'held'> & { held: number[] }>;
}

export interface NetnsScatterResult {
  session: ScatterSession;
  sender: SenderOutput;
  receivers: ReceiverOutput[];
  /** The commands that were run (for reports). */
  commands: string[];
}

function waitLine(child: ChildProcess, word: string, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`${what}: no "${word}" within ${timeoutMs} ms; stderr: ${err.slice(-2000)}`)), timeoutMs);
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.split('\n').some((l) => l.trim() === word)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (code ${code}) before "${word}"; stderr: ${err.slice(-2000)}`));
    });
  });
}

function waitExit(child: ChildProcess, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    if (child.exitCode !== null) {
      if (child.exitCode === 0) resolve();
      else reject(new Error(`${what} exited with code ${child.exitCode}`));
      return;
    }
    const timer = setTimeout(() => reject(new Error(`${what}: still running after ${timeoutMs} ms; stderr: ${err.slice(-2000)}`)), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${what} exited with code ${code}; stderr: ${err.slice(-2000)}`));
    });
  });
}

/**
 * node with tsx and vmscatter's node flags (src/node-flags.ts), as bin/vmscatter.js starts it;
 * VMSCATTER_CHILD_NODE_ARGS adds flags (e.g. --cpu-prof) to every child.
 */
export const NODE_TSX = [process.execPath, ...NODE_FLAGS, ...(process.env.VMSCATTER_CHILD_NODE_ARGS?.split(' ').filter(Boolean) ?? []), '--import', 'tsx'];

export async function runNetnsScatter(topo: Topology, o: NetnsScatterOptions): Promise<NetnsScatterResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vmscatter-netns-'));
  const timeout = o.timeoutMs ?? 60_000;
  const commands: string[] = [];
  try {
    const session = sessionFromPlan(o.plan, {
      ...(o.job !== undefined ? { job: o.job } : {}),
      key: o.auth === false ? null : 'random',
      sender: { address: SENDER_ADDR, port: 47000 },
      dataPort: 47100,
      mtu: o.mtu,
      ...(o.pagesPerDatagram ? { pagesPerDatagram: o.pagesPerDatagram } : {}),
    });
    const sessionPath = join(dir, 'session.json');
    writeFileSync(sessionPath, JSON.stringify(sessionToJson(session)));
    const receivers: ChildProcess[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 0; i < topo.receivers; i++) {
      const args = [...NODE_TSX.slice(1), 'src/transport/receiver-main.ts', '--session', sessionPath, '--target', String(i), '--iface', receiverAddr(i), '--out', join(dir, `r${i}.json`), '--idle-timeout', String(timeout)];
      if (o.digests) args.push('--digests');
      if (o.udpOffload === false) args.push('--udp-offload', 'off');
      commands.push(`ip netns exec ${topo.receiverNs(i)} node ${args.join(' ')}`);
      const c = topo.spawn(topo.receiverNs(i), NODE_TSX[0]!, args);
      if (process.env.VMSCATTER_DEBUG) c.stderr?.on('data', (d: Buffer) => process.stderr.write(`[r${i}] ${d.toString()}`));
      receivers.push(c);
      ready.push(waitLine(c, 'ready', 30_000, `receiver ${i}`));
    }
    await Promise.all(ready);
    const sargs = [...NODE_TSX.slice(1), 'src/transport/sender-main.ts', '--session', sessionPath, '--iface', SENDER_ADDR, '--seed', String(o.seed), '--out', join(dir, 'sender.json'), '--igmp', o.igmp ?? 'auto', '--wait-go'];
    if (o.skipEvery) sargs.push('--skip-every', String(o.skipEvery));
    if (o.rateBytesPerSec) sargs.push('--rate', String(o.rateBytesPerSec));
    if (o.udpOffload === false) sargs.push('--udp-offload', 'off');
    if (o.flowWindowBytes !== undefined) sargs.push('--flow-window', String(o.flowWindowBytes));
    commands.push(`ip netns exec ${topo.senderNs} node ${sargs.join(' ')}`);
    const sender = topo.spawn(topo.senderNs, NODE_TSX[0]!, sargs);
    if (process.env.VMSCATTER_DEBUG) sender.stderr?.on('data', (d: Buffer) => process.stderr.write(`[sender] ${d.toString()}`));
    await waitLine(sender, 'ready', 60_000, 'sender');
    sender.stdin?.write('go\n');
    await waitExit(sender, timeout, 'sender');
    await Promise.all(receivers.map((c, i) => waitExit(c, 15_000, `receiver ${i}`)));
    const senderOut = JSON.parse(readFileSync(join(dir, 'sender.json'), 'utf8')) as SenderOutput;
    const recvOut = receivers.map((_, i) => JSON.parse(readFileSync(join(dir, `r${i}.json`), 'utf8')) as ReceiverOutput);
    return { session, sender: senderOut, receivers: recvOut, commands };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
