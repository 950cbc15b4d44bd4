/**
 * The strategies bench's SVG chart: drawn again from the committed results, its title fits the
 * chart (it is wrapped between words) and every element stays inside it.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { resultChart, TITLE_CHARS, wrapWords } from '../../bench/strategies.js';

describe('bench strategies chart', () => {
  it('wraps words into lines of at most the limit, keeping every word in order', () => {
    const text = 'eight VMs x 256 MiB, one OS image; link-bound: sender link 250 Mbit/s (tbf), namespaces';
    for (const max of [10, 25, 40, 200]) {
      const lines = wrapWords(text, max);
      expect(lines.join(' ')).toBe(text);
      for (const l of lines) if (l.includes(' ')) expect(l.length).toBeLessThanOrEqual(max); // a longer word stands alone
    }
    expect(wrapWords('a-very-long-word x', 5)).toEqual(['a-very-long-word', 'x']);
    expect(wrapWords('', 5)).toEqual([]);
  });

  for (const file of ['strategies.json', 'strategies-quick.json']) {
    it(`drawn from bench/results/${file}: title lines fit, nothing outside the picture`, () => {
      const result = JSON.parse(readFileSync(new URL(`../../bench/results/${file}`, import.meta.url), 'utf8'));
      const svg = resultChart(result);
      const [, w, h] = /<svg [^>]*width="(\d+)" height="(\d+)"/.exec(svg)!.map(Number);
      const titles = [...svg.matchAll(/<text [^>]*font-weight="bold">([^<]*)<\/text>/g)].map((m) => m[1]!.replace(/&gt;/g, '>').replace(/&lt;/g, '<').replace(/&amp;/g, '&'));
      expect(titles.length).toBeGreaterThan(0);
      for (const t of titles) expect(t.length).toBeLessThanOrEqual(TITLE_CHARS);
      expect(titles.join(' ')).toContain(result.scenarios.find((s: { scenario: { headline: boolean } }) => s.scenario.headline).scenario.label);
      for (const m of svg.matchAll(/<(?:text|rect) x="([\d.]+)" y="([\d.]+)"(?: width="([\d.]+)" height="([\d.]+)")?/g)) {
        const [x, y, rw, rh] = [m[1], m[2], m[3] ?? '0', m[4] ?? '0'].map(Number) as [number, number, number, number];
        expect(x + rw).toBeLessThanOrEqual(w!);
        expect(y + rh).toBeLessThanOrEqual(h!);
      }
      // Bars: one per strategy in each panel, 2 x 5.
      expect(svg.match(/<rect x=/g)).toHaveLength(10);
    });
  }
});
