/**
 * Prints every IGMP join/leave seen on an interface as one JSON line (for the scatter bench:
 * joins and leaves per receiver, counted by the network for every tool alike).
 *
 *   ip netns exec NS node --import tsx bench/igmp-watch.ts --iface 10.200.0.1
 */
import { IgmpMonitor } from '../src/transport/igmp-monitor.js';
import { parseArgs } from '../src/transport/scatter-child.js';

const args = parseArgs(process.argv.slice(2));
const iface = args.get('iface');
if (!iface) {
  process.stderr.write('usage: igmp-watch --iface ADDR\n');
  process.exit(2);
}
const r = await IgmpMonitor.start({ iface, onEvent: (e) => process.stdout.write(`${JSON.stringify(e)}\n`) });
if (!r.monitor) {
  process.stdout.write(`unavailable ${r.reason}\n`);
  process.exit(0);
}
const monitor = r.monitor;
process.stdout.write('ready\n');
const stop = (): void => {
  monitor.close();
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
