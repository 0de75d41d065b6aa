// node under the preload: objects, JSON, maps, strings, buffers and zlib.
const zlib = require('zlib');
const items = [];
for (let i = 0; i < 50000; i++) items.push({ id: i, name: 'item' + i, tags: ['a'.repeat(i % 7)] });
const text = JSON.stringify(items);
const back = JSON.parse(text);
if (back.length !== 50000 || back[777].name !== 'item777') throw new Error('json');
const m = new Map(back.map((o) => [o.name, o.id]));
if (m.get('item4242') !== 4242) throw new Error('map');
const z = zlib.gzipSync(Buffer.from(text));
if (zlib.gunzipSync(z).toString() !== text) throw new Error('zlib');
console.log('node ok', text.length, z.length);
