/**
 * `vmscatter bench plan`: the planner against the exhaustive optimum (small fleets), against
 * VMScatter's greedy (the same fleets, same run), the join/leave schedule against groups sent in
 * id order, the MinHash sketch's effect on the objective, and the scale case (1,000 VMs x 64
 * targets x 16 M pages) in a child process so that its RSS is its own.
 *
 * Fleets are synthetic with clustered sharing (src/plan/fleet.ts), in families (FAMILIES below).
 * The headline family, and the one `vsGreedy` refers to, is 'measured': guests like the real ones
 * of notes/qemu.md onto targets with 15% more room than the VMs need. The other families are
 * labelled scenarios, each testing one reason VMScatter's greedy could fall behind; they are
 * reported next to it, never instead of it. Traffic is VMScatter's: bytes on the sender's link plus
 * bytes on every target's link (src/plan/objective.ts). With multicast the sender's part is the
 * fleet's distinct contents whatever the placement, and so is each target's share of contents
 * only one VM holds: `floorVsGreedy` (every shared content on one target only, over greedy's
 * traffic) is the best ratio any placement could reach on a family.
 */
import { fork } from 'node:child_process';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { exhaustivePlacement } from '../src/plan/exhaustive.js';
import { generateClusteredFleet, type ClusteredFleetSpec, type FleetProfile } from '../src/plan/fleet.js';
import { buildSharingGraph } from '../src/plan/graph.js';
import { greedyPlacement } from '../src/plan/greedy.js';
import { AssignmentState, buildProblem, sharedLowerBound, trafficPages } from '../src/plan/objective.js';
import { makePlanWithStats } from '../src/plan/plan.js';
import { NODE_FLAGS } from '../src/node-flags.js';
import { placeVms } from '../src/plan/placement.js';

const WORKER_FLAG = '--plan-scale-worker';

const r4 = (x: number): number => Math.round(x * 10000) / 10000;
const r2 = (x: number): number => Math.round(x * 100) / 100;

interface SmallCase {
  seed: number;
  profile: FleetProfile;
  vms: number;
  targets: number;
  planner: number;
  greedy: number | null;
  optimum: number;
  nodes: number;
}

function smallCases(count: number): SmallCase[] {
  const out: SmallCase[] = [];
  for (let i = 0; i < count; i++) {
    const seed = 100 + i;
    const profile: FleetProfile = i % 2 === 0 ? 'measured' : 'clustered';
    const spec: ClusteredFleetSpec = {
      seed,
      vms: 8 + (i % 4),
      targets: 3 + (i % 3),
      pagesPerVm: 512,
      profile,
      osImages: 2 + (i % 2),
      tenants: 3 + (i % 3),
      capacitySlack: 0.1,
    };
    const f = generateClusteredFleet(spec);
    const p = buildProblem(f.vms, f.targets);
    const r = placeVms(p, f.vms, { seed });
    const g = greedyPlacement(p, new AssignmentState(p));
    const opt = exhaustivePlacement(p, { incumbent: r.assignment });
    out.push({
      seed,
      profile,
      vms: spec.vms,
      targets: spec.targets,
      planner: r.trafficPages,
      greedy: g.complete ? trafficPages(p, g.sharedCost) : null,
      optimum: opt.trafficPages,
      nodes: opt.nodes,
    });
  }
  return out;
}

/**
 * Fleet families of the comparison with VMScatter's greedy: what each is and why it is realistic.
 * Every family runs on the same shapes and seeds; `spec` overrides the generator's defaults.
 */
interface FleetFamily {
  name: string;
  what: string;
  why: string;
  spec: (shape: { vms: number; targets: number }) => Partial<ClusteredFleetSpec>;
}

export const FAMILIES: readonly FleetFamily[] = [
  {
    name: 'measured',
    what: "headline: profile 'measured' (notes/qemu.md guests), OS images and tenants, targets with 15% spare room",
    why: 'what the project measured on real guests; never tuned',
    spec: () => ({ profile: 'measured' }),
  },
  {
    name: 'clustered',
    what: "profile 'clustered': tenants also share an application stack (a third of their pages)",
    why: 'the setting VMScatter targets: tenants running the same software',
    spec: () => ({ profile: 'clustered' }),
  },
  {
    name: 'roomy',
    what: "profile 'measured' onto targets with twice the room the VMs need (capacitySlack 1)",
    why: 'evacuation into a fresh rack or a cluster at half utilisation; greedy fills each target to the brim',
    spec: () => ({ profile: 'measured', capacitySlack: 1 }),
  },
  {
    name: 'cloned',
    what: "profile 'cloned': VMs cloned from their tenant's golden image (82% of contents from shared pools), 30% spare room",
    why: 'VDI linked clones, CI runners, microVMs restored from one snapshot; two bare same-OS guests already share 68% (notes/qemu.md)',
    spec: () => ({ profile: 'cloned', capacitySlack: 0.3 }),
  },
  {
    name: 'cloned-uneven',
    what: "profile 'cloned', target capacities spread +-80% (capacitySpread 0.8), 30% spare room",
    why: 'targets of mixed host sizes or with different free room',
    spec: () => ({ profile: 'cloned', capacitySlack: 0.3, capacitySpread: 0.8 }),
  },
  {
    name: 'cloned-pools',
    what: "profile 'cloned' with as many tenants (clone pools) as targets, so a pool is about one host's share, 30% spare room",
    why: 'VDI pools or CI runner pools sized to fill a host; greedy splits the pool straddling each target it fills',
    spec: (shape) => ({ profile: 'cloned', tenants: shape.targets, capacitySlack: 0.3 }),
  },
  {
    name: 'small-tenants',
    what: "profile 'clustered' with one tenant per two VMs (mostly 1-3 VMs each), 30% spare room",
    why: 'public-cloud hosts: many small customers on a few OS images',
    spec: (shape) => ({ profile: 'clustered', tenants: Math.round(shape.vms / 2), capacitySlack: 0.3 }),
  },
];

const HEADLINE_FAMILY = 'measured';

interface MediumCase {
  family: string;
  seed: number;
  profile: FleetProfile;
  vms: number;
  targets: number;
  pagesPerVm: number;
  plannerTraffic: number;
  greedyTraffic: number;
  naiveTraffic: number;
  /** Traffic no placement can avoid: every content on one target at least. */
  floorTraffic: number;
  joinsLeaves: number;
  unorderedJoinsLeaves: number;
  multicastGroups: number;
  seconds: number;
  graph: string;
}

function mediumCase(family: string, spec: ClusteredFleetSpec & { pagesPerVm: number }): MediumCase {
  const f = generateClusteredFleet(spec);
  const { plan, stats } = makePlanWithStats(f.vms, f.targets, {}, { seed: spec.seed ?? 1 });
  const p = stats.problem;
  const pr = plan.predicted;
  const pages = (b: number | undefined) => (b ?? NaN) / 4096;
  return {
    family,
    seed: spec.seed ?? 1,
    profile: spec.profile ?? 'measured',
    vms: spec.vms,
    targets: spec.targets,
    pagesPerVm: spec.pagesPerVm,
    plannerTraffic: pages(pr.placementTrafficBytes),
    greedyTraffic: pages(pr.greedyTrafficBytes),
    naiveTraffic: pages(pr.naiveTrafficBytes),
    floorTraffic: trafficPages(p, sharedLowerBound(p)),
    joinsLeaves: pr.joins + pr.leaves,
    unorderedJoinsLeaves: (pr.unorderedJoins ?? 0) + (pr.unorderedLeaves ?? 0),
    multicastGroups: plan.order.length,
    seconds: stats.seconds.total,
    graph: stats.placement?.graphMethod ?? '-',
  };
}

function sketchError(spec: ClusteredFleetSpec): { exact: number; minhash: number; error: number; weightError: number } {
  const f = generateClusteredFleet(spec);
  const p = buildProblem(f.vms, f.targets);
  const exact = placeVms(p, f.vms, { graph: 'exact', seed: 1 }).trafficPages;
  const minhash = placeVms(p, f.vms, { graph: 'minhash', seed: 1 }).trafficPages;
  // Edge weights: sum of |sketch - exact| over sum of exact, all pairs (no neighbour cap).
  const ge = buildSharingGraph(f.vms, { method: 'exact', maxNeighbours: f.vms.length });
  const gm = buildSharingGraph(f.vms, { method: 'minhash', maxNeighbours: f.vms.length });
  let diff = 0;
  let total = 0;
  ge.graph.forEachEdge((_e, a, s, t) => {
    const w = gm.graph.hasEdge(s, t) ? gm.graph.getEdgeAttribute(s, t, 'weight') : 0;
    diff += Math.abs(w - a.weight);
    total += a.weight;
  });
  return { exact, minhash, error: r4(minhash / exact - 1), weightError: r4(diff / Math.max(1, total)) };
}

interface ScaleResult {
  spec: ClusteredFleetSpec;
  /** Traffic with the MinHash graph over traffic with the exact graph, minus one (null: exact graph used). */
  sketchObjectiveError: number | null;
  contentEntries: number;
  nonZeroPages: number;
  distinctContents: number;
  generateSeconds: number;
  planSeconds: number;
  /** CPU time of the planning (wall time grows when the machine is shared). */
  planCpuSeconds: number;
  phases: Record<string, number>;
  rssMiB: number;
  graph: string;
  trafficVsGreedy: number;
  trafficVsNaive: number;
  joinLeaveVsUnordered: number;
  multicastGroups: number;
}

function runScaleWorker(spec: ClusteredFleetSpec, compareExact: boolean): ScaleResult {
  const t0 = performance.now();
  const f = generateClusteredFleet(spec);
  const t1 = performance.now();
  const cpu0 = process.cpuUsage();
  const { plan, stats } = makePlanWithStats(f.vms, f.targets, {}, { seed: 1 });
  const cpu = process.cpuUsage(cpu0);
  const t2 = performance.now();
  const pr = plan.predicted;
  let entries = 0;
  let nz = 0;
  for (const vm of f.vms) {
    entries += vm.contents.length;
    nz += vm.nonZeroPages;
  }
  const rssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
  // After the measurement: the same placement with the exact graph, for the sketch's effect.
  let sketchObjectiveError: number | null = null;
  if (compareExact && stats.placement?.graphMethod === 'minhash') {
    const exact = placeVms(stats.problem, f.vms, { graph: 'exact', seed: 1 });
    sketchObjectiveError = r4(stats.placement.trafficPages / exact.trafficPages - 1);
  }
  return {
    spec,
    sketchObjectiveError,
    contentEntries: entries,
    nonZeroPages: nz,
    distinctContents: stats.problem.distinctContents,
    generateSeconds: r2((t1 - t0) / 1e3),
    planSeconds: r2((t2 - t1) / 1e3),
    planCpuSeconds: r2((cpu.user + cpu.system) / 1e6),
    phases: Object.fromEntries(Object.entries(stats.seconds).map(([k, v]) => [k, r2(v)])),
    rssMiB,
    graph: stats.placement?.graphMethod ?? '-',
    trafficVsGreedy: r4((pr.placementTrafficBytes ?? NaN) / (pr.greedyTrafficBytes ?? NaN)),
    trafficVsNaive: r4(pr.trafficBytes / pr.naiveTrafficBytes),
    joinLeaveVsUnordered: r4((pr.joins + pr.leaves) / ((pr.unorderedJoins ?? 0) + (pr.unorderedLeaves ?? 0))),
    multicastGroups: plan.order.length,
  };
}

/** The scale case in a child process (its own heap and RSS). */
function scaleInChild(spec: ClusteredFleetSpec, compareExact: boolean): Promise<ScaleResult> {
  return new Promise((resolve, reject) => {
    // Its own loader: under bin/vmscatter.js tsx is registered in-process, not in execArgv, so an
    // inherited execArgv could not load this .ts file.
    const child = fork(fileURLToPath(import.meta.url), [WORKER_FLAG, JSON.stringify(spec), compareExact ? 'exact' : ''], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [...NODE_FLAGS, '--import', import.meta.resolve('tsx')],
    });
    let result: ScaleResult | undefined;
    child.on('message', (m) => {
      result = m as ScaleResult;
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (result) resolve(result);
      else reject(new Error(`plan scale worker exited with code ${code} and no result`));
    });
  });
}

export async function runPlanBench(opts: { quick: boolean; json: boolean }): Promise<Record<string, unknown>> {
  const started = new Date().toISOString();
  const log = (s: string) => {
    if (!opts.json) console.log(s);
  };
  log(`plan bench (${opts.quick ? 'quick' : 'full'}): ${availableParallelism()} CPUs, load average ${loadavg()[0]!.toFixed(1)}, node ${process.version}, ${started}`);

  // 1. Against the optimum.
  const small = smallCases(opts.quick ? 16 : 40);
  const ratios = small.map((c) => c.planner / c.optimum);
  const gratios = small.filter((c) => c.greedy !== null).map((c) => c.greedy! / c.optimum);
  const vsOptimum = r4(Math.max(...ratios));
  const vsOptimumMean = r4(ratios.reduce((a, b) => a + b, 0) / ratios.length);
  const optimalCases = ratios.filter((x) => x <= 1 + 1e-12).length;
  log(
    `vs exhaustive optimum, ${small.length} fleets of 8-11 VMs on 3-5 targets: worst ${vsOptimum}x, mean ${vsOptimumMean}x, optimal in ${optimalCases}; ` +
      `VMScatter greedy worst ${r4(Math.max(...gratios))}x, mean ${r4(gratios.reduce((a, b) => a + b, 0) / gratios.length)}x`,
  );

  // 2. Against VMScatter's greedy, same fleets, same run.
  const seeds = opts.quick ? [1, 2, 3] : [1, 2, 3, 4, 5];
  const shapes = opts.quick
    ? [{ vms: 200, targets: 16, pagesPerVm: 4096 }]
    : [
        { vms: 200, targets: 16, pagesPerVm: 4096 },
        { vms: 500, targets: 32, pagesPerVm: 8192 },
      ];
  const medium: MediumCase[] = [];
  for (const shape of shapes)
    for (const fam of FAMILIES)
      for (const seed of seeds) medium.push(mediumCase(fam.name, { seed, ...shape, ...fam.spec(shape) }));
  const agg = (family: string) => {
    const m = medium.filter((c) => c.family === family);
    const sum = (f: (c: MediumCase) => number) => m.reduce((a, c) => a + f(c), 0);
    return {
      fleets: m.length,
      trafficVsGreedy: r4(sum((c) => c.plannerTraffic) / sum((c) => c.greedyTraffic)),
      worstFleetVsGreedy: r4(Math.max(...m.map((c) => c.plannerTraffic / c.greedyTraffic))),
      bestFleetVsGreedy: r4(Math.min(...m.map((c) => c.plannerTraffic / c.greedyTraffic))),
      /** Traffic above what no placement can avoid, planner over greedy. */
      excessVsGreedy: r4(sum((c) => c.plannerTraffic - c.floorTraffic) / sum((c) => c.greedyTraffic - c.floorTraffic)),
      /** Share of greedy's traffic that any placement could still save at most. */
      greedyHeadroom: r4(1 - sum((c) => c.floorTraffic) / sum((c) => c.greedyTraffic)),
      /** The best traffic ratio vs greedy any placement could reach (a bound, usually not reachable). */
      floorVsGreedy: r4(sum((c) => c.floorTraffic) / sum((c) => c.greedyTraffic)),
      trafficVsNaive: r4(sum((c) => c.plannerTraffic) / sum((c) => c.naiveTraffic)),
      joinLeaveVsUnordered: r4(sum((c) => c.joinsLeaves) / sum((c) => c.unorderedJoinsLeaves)),
      meanSeconds: r2(sum((c) => c.seconds) / m.length),
    };
  };
  const families = Object.fromEntries(FAMILIES.map((f) => [f.name, { what: f.what, why: f.why, ...agg(f.name) }]));
  const measured = families[HEADLINE_FAMILY]!;
  const clustered = families.clustered!;
  log(
    `vs VMScatter greedy (same fleets, same run; ${shapes.map((x) => `${x.vms} VMs x ${x.targets} targets`).join(', ')}; seeds ${seeds.join(',')}). ` +
      `'floor' = every shared content on one target only, the best ratio any placement could reach:`,
  );
  const pad = (x: string | number, n: number) => String(x).padEnd(n);
  log(`  ${pad('family', 14)} ${pad('fleets', 6)} ${pad('vsGreedy', 8)} ${pad('worst', 6)} ${pad('best', 6)} ${pad('excess', 6)} ${pad('floor', 6)} ${pad('vsNaive', 7)} what`);
  for (const f of FAMILIES) {
    const a = families[f.name]!;
    log(
      `  ${pad(f.name, 14)} ${pad(a.fleets, 6)} ${pad(a.trafficVsGreedy.toFixed(4), 8)} ${pad(a.worstFleetVsGreedy.toFixed(3), 6)} ${pad(a.bestFleetVsGreedy.toFixed(3), 6)} ` +
        `${pad(a.excessVsGreedy.toFixed(3), 6)} ${pad(a.floorVsGreedy.toFixed(3), 6)} ${pad(a.trafficVsNaive.toFixed(3), 7)} ${f.name === HEADLINE_FAMILY ? '[headline, vsGreedy] ' : ''}${f.what}`,
    );
  }
  const best = FAMILIES.map((f) => ({ name: f.name, ...families[f.name]! })).sort((x, y) => x.trafficVsGreedy - y.trafficVsGreedy)[0]!;
  log(
    `  goal <= 0.90x: headline '${HEADLINE_FAMILY}' ${measured.trafficVsGreedy}x (floor ${measured.floorVsGreedy}x); ` +
      `best family '${best.name}' ${best.trafficVsGreedy}x (floor ${best.floorVsGreedy}x)`,
  );
  // Over the 'measured' and 'clustered' fleets, as before there were more families; all of them too.
  const jlOf = (m: MediumCase[]) => r4(m.reduce((a, c) => a + c.joinsLeaves, 0) / m.reduce((a, c) => a + c.unorderedJoinsLeaves, 0));
  const jl = jlOf(medium.filter((c) => c.family === 'measured' || c.family === 'clustered'));
  const jlAll = jlOf(medium);
  log(`joins + leaves, ordered schedule vs groups in id order (same channel rule, 4 channels): ${jl}x ('measured' and 'clustered' fleets), ${jlAll}x (all families)`);

  // 3. MinHash sketch against the exact graph: effect on the objective.
  const sk = sketchError({ seed: 21, vms: opts.quick ? 150 : 300, targets: opts.quick ? 12 : 24, pagesPerVm: 4096 });
  log(
    `MinHash graph (128 bins) vs exact graph, ${sk.minhash === sk.exact ? 'same' : 'different'} plan: traffic ${sk.error >= 0 ? '+' : ''}${(sk.error * 100).toFixed(2)}%; ` +
      `edge weights off by ${(sk.weightError * 100).toFixed(1)}% in sum`,
  );

  // 4. Scale.
  const scaleSpec: ClusteredFleetSpec = opts.quick
    ? { seed: 1, vms: 250, targets: 16, pagesPerVm: 16384 }
    : { seed: 1, vms: 1000, targets: 64, pagesPerVm: 16384 };
  const scale = await scaleInChild(scaleSpec, !opts.quick);
  const scaleLoad = loadavg().map((x) => r2(x));
  log(
    `scale${opts.quick ? ' (quick preset: reduced case)' : ''}: ${scale.spec.vms} VMs x ${scale.spec.targets} targets x ${(scale.contentEntries / 1e6).toFixed(1)} M pages ` +
      `(${(scale.distinctContents / 1e6).toFixed(1)} M distinct): planned in ${scale.planSeconds} s (${scale.planCpuSeconds} s of CPU; load average ${scaleLoad[0]!.toFixed(1)} on ${availableParallelism()} CPUs), RSS ${scale.rssMiB} MiB, graph ${scale.graph}; ` +
      `traffic vs greedy ${scale.trafficVsGreedy}x, vs plain migration ${scale.trafficVsNaive}x; phases ${JSON.stringify(scale.phases)}` +
      (scale.sketchObjectiveError !== null ? `; MinHash graph vs exact graph at this scale: ${(scale.sketchObjectiveError * 100).toFixed(2)}% traffic` : ''),
  );

  const result: Record<string, unknown> = {
    bench: 'plan',
    preset: opts.quick ? 'quick' : 'full',
    vsOptimum,
    vsOptimumMean,
    vsGreedy: measured.trafficVsGreedy,
    vsGreedyFamily: HEADLINE_FAMILY,
    vsGreedyByFamily: Object.fromEntries(FAMILIES.map((f) => [f.name, families[f.name]!.trafficVsGreedy])),
    floorVsGreedyByFamily: Object.fromEntries(FAMILIES.map((f) => [f.name, families[f.name]!.floorVsGreedy])),
    vsGreedyClustered: clustered.trafficVsGreedy,
    excessVsGreedy: measured.excessVsGreedy,
    excessVsGreedyClustered: clustered.excessVsGreedy,
    joinLeaveVsUnordered: jl,
    joinLeaveVsUnorderedAllFamilies: jlAll,
    scaleSeconds: scale.planSeconds,
    scaleCpuSeconds: scale.planCpuSeconds,
    /** 1, 5 and 15 minute load averages right after the scale case (wall time grows with load). */
    scaleLoadAverage: scaleLoad,
    loadAverage: loadavg().map((x) => r2(x)),
    scaleRssMiB: scale.rssMiB,
    scaleCase: { vms: scale.spec.vms, targets: scale.spec.targets, pages: scale.contentEntries, reduced: opts.quick },
    sketchObjectiveError: scale.sketchObjectiveError ?? sk.error,
    goals: { vsOptimum: '<= 1.02', vsGreedy: `<= 0.90 (family '${HEADLINE_FAMILY}')`, scaleSeconds: '<= 20 (full preset)', scaleRssMiB: '<= 4096' },
    small: {
      fleets: small.length,
      optimalCases,
      greedyVsOptimumWorst: r4(Math.max(...gratios)),
      greedyVsOptimumMean: r4(gratios.reduce((a, b) => a + b, 0) / gratios.length),
    },
    measured,
    clustered,
    families,
    medium,
    sketch: sk,
    scale,
    machine: {
      nproc: availableParallelism(),
      cpu: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      totalMemBytes: totalmem(),
    },
    date: started,
    command: `vmscatter bench plan${opts.quick ? ' --quick' : ''}`,
  };
  return result;
}

if (process.argv[2] === WORKER_FLAG && process.send) {
  const spec = JSON.parse(process.argv[3] ?? '{}') as ClusteredFleetSpec;
  const r = runScaleWorker(spec, process.argv[4] === 'exact');
  process.send(r, () => process.exit(0));
}
