/**
 * docker-compose.yml and the Dockerfile cannot be run here (no Docker engine on these machines),
 * so this checks what can be checked: the file parses; it has the coordinator, one source and
 * three targets on one bridge network; every service's command is accepted by the real CLI
 * (commander with the actions stubbed) and gives a valid configuration; the addresses the
 * services advertise and call each other on agree; the image's entrypoint is the CLI.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { registerServiceCommands } from '../../src/cli/service-commands.js';
import { coordinatorConfig } from '../../src/cli/coordinator-command.js';
import { agentConfig } from '../../src/cli/agent-command.js';
import { PROJECT_ROOT, TOKEN } from './harness.js';

interface Service {
  build?: string;
  image?: string;
  hostname?: string;
  command: string[];
  environment: Record<string, string>;
  networks: Record<string, { ipv4_address?: string }>;
  ports?: string[];
  depends_on?: Record<string, unknown>;
}

const compose = parse(readFileSync(join(PROJECT_ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
  networks: Record<string, { driver: string; driver_opts?: Record<string, string>; ipam?: { config: Array<{ subnet: string }> } }>;
  volumes?: Record<string, unknown>;
};

/** ${VAR:?message} and ${VAR:-default} as compose would substitute them with VMSCATTER_TOKEN set. */
function interpolate(env: Record<string, string>): Record<string, string> {
  const vars: Record<string, string> = { VMSCATTER_TOKEN: TOKEN };
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v).replace(/\$\{(\w+)(?::[?-][^}]*)?\}/g, (_, name: string) => vars[name] ?? '')]));
}

/** Parse a command line with the real CLI definition; returns the subcommand and its options. */
async function parseCommand(argv: string[]): Promise<{ name: string; opts: Record<string, unknown> }> {
  const program = new Command('vmscatter');
  registerServiceCommands(program);
  let got: { name: string; opts: Record<string, unknown> } | undefined;
  const silence = { writeOut: () => {}, writeErr: () => {} };
  program.exitOverride().configureOutput(silence);
  for (const c of program.commands) {
    c.exitOverride().configureOutput(silence);
    c.action((...args: unknown[]) => {
      const cmd = args.at(-1) as Command;
      got = { name: cmd.name(), opts: cmd.opts() };
    });
  }
  await program.parseAsync(argv, { from: 'user' });
  if (!got) throw new Error(`no command ran for ${argv.join(' ')}`);
  return got;
}

describe('docker-compose.yml', () => {
  const services = compose.services;

  it('has a coordinator, one source and three targets on one bridge network', () => {
    expect(Object.keys(services).sort()).toEqual(['coordinator', 'source', 'target1', 'target2', 'target3']);
    const nets = Object.entries(compose.networks);
    expect(nets).toHaveLength(1);
    const [net, def] = nets[0]!;
    expect(def.driver).toBe('bridge');
    const subnet = def.ipam!.config[0]!.subnet;
    expect(subnet).toMatch(/^\d+\.\d+\.\d+\.0\/24$/);
    const prefix = subnet.replace(/0\/24$/, '');
    const addrs = new Set<string>();
    for (const [name, s] of Object.entries(services)) {
      expect(Object.keys(s.networks), name).toEqual([net]);
      const a = s.networks[net]!.ipv4_address!;
      expect(a.startsWith(prefix), `${name} ${a} in ${subnet}`).toBe(true);
      addrs.add(a);
      expect(s.build, name).toBe('.');
      expect(s.image, name).toBe('vmscatter:dev');
      expect(s.hostname, name).toBe(name);
    }
    expect(addrs.size).toBe(5);
  });

  it('every command is accepted by the CLI and gives a valid configuration; addresses agree', async () => {
    const c = services.coordinator!;
    const parsed = await parseCommand(c.command);
    expect(parsed.name).toBe('coordinator');
    const env = interpolate(c.environment);
    expect(env.VMSCATTER_TOKEN).toBe(TOKEN);
    const { cfg } = coordinatorConfig(parsed.opts, env);
    expect(cfg.coordinator.listen).toBe('0.0.0.0:7400');
    expect(cfg.coordinator.stateDir).toBe('/var/lib/vmscatter');
    const url = new URL(cfg.coordinator.url);
    expect(url.hostname).toBe('coordinator');
    expect(url.port).toBe(cfg.coordinator.listen.split(':')[1]);
    expect(c.ports).toEqual([`127.0.0.1:${url.port}:${url.port}`]);

    const roles: Record<string, string> = {};
    for (const name of ['source', 'target1', 'target2', 'target3']) {
      const s = services[name]!;
      const p = await parseCommand(s.command);
      expect(p.name, name).toBe('agent');
      const a = agentConfig(p.opts, interpolate(s.environment));
      roles[name] = a.agent.role;
      expect(a.agent.name, name).toBe(name);
      // Others reach it by its service name (compose DNS); it listens on every interface.
      expect(a.agent.advertise, name).toBe(s.hostname);
      expect(a.agent.listen, name).toMatch(/^0\.0\.0\.0:\d+$/);
      expect(a.coordinator.url, name).toBe(cfg.coordinator.url);
      expect(a.auth.token, name).toBe(TOKEN);
      // Multicast is sent and received on the interface of the service's fixed address.
      expect(a.scatter.interface, name).toBe(Object.values(s.networks)[0]!.ipv4_address);
      expect(s.depends_on, name).toHaveProperty('coordinator');
      if (a.agent.role === 'target') {
        expect(a.agent.dataListen, name).toMatch(/^0\.0\.0\.0:[1-9]\d*$/);
        expect(a.agent.capacityMiB, name).toBeGreaterThan(0);
      } else expect(a.fleet.vms).toBeGreaterThan(0);
    }
    expect(roles).toEqual({ source: 'source', target1: 'target', target2: 'target', target3: 'target' });
  });

  it('a command the CLI does not know would fail this check', async () => {
    await expect(parseCommand(['agent', '--role', 'target', '--bogus'])).rejects.toThrow(/unknown option '--bogus'/);
    await expect(parseCommand(['agent', '--role', 'middle'])).rejects.toThrow(/Allowed choices are source, target/);
    await expect(parseCommand(['agent'])).rejects.toThrow(/required option '--role <role>' not specified/);
  });
});

describe('Dockerfile', () => {
  const text = readFileSync(join(PROJECT_ROOT, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));

  it('builds on Node 20 and runs the CLI the compose commands are written for', () => {
    const froms = lines.filter((l) => l.startsWith('FROM '));
    expect(froms.length).toBeGreaterThanOrEqual(1);
    for (const f of froms) expect(f).toMatch(/^FROM node:20[-.\w]*/);
    const entry = lines.find((l) => l.startsWith('ENTRYPOINT '))!;
    const argv = JSON.parse(entry.slice('ENTRYPOINT '.length)) as string[];
    expect(argv[0]).toBe('node');
    // node [flags (src/node-flags.ts)] script
    expect(existsSync(join(PROJECT_ROOT, argv.at(-1)!))).toBe(true);
    for (const dir of ['bin', 'src', 'config']) expect(lines.some((l) => new RegExp(`^COPY ${dir} `).test(l)), dir).toBe(true);
    expect(lines.some((l) => /npm ci --omit=dev/.test(l))).toBe(true);
    // The coordinator's state volume is where the image keeps it.
    expect(text).toMatch(/\/var\/lib\/vmscatter/);
  });
});
