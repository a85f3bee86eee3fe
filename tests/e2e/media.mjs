// Stream shapes the end-to-end tests make out of the demo media (target/demo-media,
// written by ffmpeg at set-up).

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The fMP4 rendition as one file (init segment, then every media segment) and a
 * playlist of byte ranges into it; all but the first range give no offset (each starts
 * where the previous one ended). Returns the ranges.
 */
export function writeSingleFile(fmp4, out) {
  const playlist = readFileSync(join(fmp4, 'stream.m3u8'), 'utf8');
  const parts = [readFileSync(join(fmp4, 'init.mp4'))];
  const lines = [];
  const ranges = [];
  let offset = parts[0].length;
  for (const line of playlist.split('\n')) {
    if (line.startsWith('#EXT-X-MAP:')) {
      lines.push(`#EXT-X-MAP:URI="stream.mp4",BYTERANGE="${parts[0].length}@0"`);
    } else if (line.endsWith('.m4s')) {
      const data = readFileSync(join(fmp4, line));
      parts.push(data);
      lines.push(ranges.length === 0 ? `#EXT-X-BYTERANGE:${data.length}@${offset}` : `#EXT-X-BYTERANGE:${data.length}`, 'stream.mp4');
      ranges.push([offset, offset + data.length]);
      offset += data.length;
    } else {
      lines.push(line);
    }
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'stream.mp4'), Buffer.concat(parts));
  writeFileSync(join(out, 'stream.m3u8'), lines.join('\n'));
  return ranges;
}

