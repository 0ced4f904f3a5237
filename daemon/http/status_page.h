// The status page served at /: one self-contained HTML file (no external
// assets) that lists runs and, for the chosen run, its checkpoints, a chart
// of loss and size over steps and its lineage (base models, the runs it
// branched from or into, checkpoints, exports), updated live from the
// events stream.
#pragma once

#include <string_view>

namespace ckptd::http {

inline constexpr std::string_view kStatusPage = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>ckptd</title>
<style>
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;--acc:#2f6fec;--ok:#1f9d55;--warn:#c27c0e;--bad:#d64545}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{display:flex;align-items:baseline;gap:16px;padding:14px 24px;background:#141a26;color:#fff}
header h1{margin:0;font-size:18px;letter-spacing:.5px}header span{color:#9aa4b8;font-size:13px}
main{padding:18px 24px;display:grid;gap:18px}
.runs{display:flex;flex-wrap:wrap;gap:12px}
.run{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;min-width:210px;cursor:pointer}
.run.sel{border-color:var(--acc);box-shadow:0 0 0 2px #2f6fec33}
.run b{font-size:15px}.run .meta{color:var(--mute);font-size:12px;margin-top:4px}
.pill{display:inline-block;border-radius:999px;padding:1px 8px;font-size:11px;font-weight:600;margin-left:6px}
.open{background:#e3f4ea;color:var(--ok)}.idle{background:#eef0f4;color:var(--mute)}.finished{background:#e8eefc;color:var(--acc)}.err{background:#fbe9e9;color:var(--bad)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.panel h2{margin:0 0 10px;font-size:15px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--mute);font-weight:600;font-size:12px}td.num{text-align:right}
tr.latest td{background:#f3f7ff}tr.fresh td{animation:hl 2s ease-out}@keyframes hl{from{background:#fff3c4}}
.keep{color:var(--ok)}.drop{color:var(--bad)}.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
svg{width:100%;height:220px}.axis{stroke:var(--line)}.lbl{fill:var(--mute);font-size:11px}
.legend{display:flex;gap:14px;color:var(--mute);font-size:12px;margin-bottom:6px}.legend i{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:5px}
#live{font-size:12px;color:var(--mute)}#live.on::before{content:"\25CF ";color:var(--ok)}
.empty{color:var(--mute);padding:10px 0}
#lineage{height:auto;min-height:120px}#lineage .edge{fill:none;stroke:#aab2c2;stroke-width:1.5}
#lineage .node circle,#lineage .node rect{stroke:#fff;stroke-width:2}#lineage .ckpt circle{fill:var(--acc)}
#lineage .base circle{fill:#7b5cc4}#lineage .gone circle{fill:#c9ced8}#lineage .export rect{fill:var(--warn)}
#lineage .pinned circle{fill:var(--ok)}#lineage .latest circle,#lineage .latest rect{stroke:#141a26;stroke-width:2.5}
#lineage text{font-size:11px;fill:var(--ink)}#lineage text.lane{fill:var(--mute);font-weight:600}
</style></head><body>
<header><h1>ckptd</h1><span id="summary">loading…</span><span id="live"></span></header>
<main>
<section class="runs" id="runs"></section>
<section class="panel"><h2 id="title">Checkpoints</h2>
<div class="legend"><span><i style="background:#2f6fec"></i>loss</span><span><i style="background:#c27c0e"></i>size (MiB)</span></div>
<svg id="chart" viewBox="0 0 900 220" preserveAspectRatio="none"></svg></section>
<section class="panel"><h2 id="ltitle">Lineage</h2>
<div class="legend"><span><i style="background:#7b5cc4"></i>base model</span><span><i style="background:#2f6fec"></i>checkpoint</span><span><i style="background:#1f9d55"></i>pinned</span><span><i style="background:#c27c0e"></i>export</span><span>★ latest</span></div>
<svg id="lineage" viewBox="0 0 900 120"></svg></section>
<section class="panel"><table id="table"><thead><tr><th>step</th><th>time (UTC)</th><th class="num">size</th><th>uuid</th><th>metrics</th><th>pinned</th><th>latest</th><th>retention next</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
const $=s=>document.querySelector(s);let run=new URLSearchParams(location.search).get('run');let es=null;let known=new Set();
let T=new URLSearchParams(location.search).get('token')||sessionStorage.getItem('ckptd-token');
if(T){sessionStorage.setItem('ckptd-token',T);const u=new URL(location.href);if(u.searchParams.has('token')){u.searchParams.delete('token');history.replaceState(null,'',u)}}
const fmtB=b=>{b=Number(b);const u=['B','KiB','MiB','GiB','TiB'];let i=0;while(b>=1024&&i<4){b/=1024;i++}return b.toFixed(i?1:0)+' '+u[i]};
const esc=s=>String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
async function get(p){const r=await fetch(p,T?{headers:{Authorization:'Bearer '+T}}:{});if(!r.ok)throw new Error((await r.json()).error.message);return r.json()}
async function loadRuns(){const d=await get('/v1/runs');const runs=d.runs||[];
 $('#summary').textContent=runs.length+' run'+(runs.length==1?'':'s');
 if(!run&&runs.length)run=runs[0].run_id;
 $('#runs').innerHTML=runs.map(r=>{const st=(r.state||'').replace('RUN_STATE_','').toLowerCase();
  return `<div class="run${r.run_id==run?' sel':''}" data-run="${esc(r.run_id)}"><b>${esc(r.run_id)}</b><span class="pill ${st}">${st}</span>${r.write_error?'<span class="pill err">write error</span>':''}
  <div class="meta">last step ${r.last_step??'—'} · ${r.checkpoint_count||0} checkpoints · ${fmtB(r.total_bytes||0)}</div></div>`}).join('')||'<div class="empty">No runs yet.</div>';
 document.querySelectorAll('.run').forEach(e=>e.onclick=()=>{run=e.dataset.run;history.replaceState(null,'','?run='+encodeURIComponent(run));known.clear();loadRuns();loadRun();watch()})}
async function loadRun(){if(!run)return;$('#title').textContent='Checkpoints of '+run;let all=[],tok='';
 do{const d=await get(`/v1/runs/${encodeURIComponent(run)}/checkpoints?page_size=1000${tok?'&page_token='+tok:''}`);all=all.concat(d.checkpoints||[]);tok=d.next_page_token||''}while(tok);
 const fresh=new Set(all.map(c=>c.step).filter(s=>known.size&&!known.has(s)));known=new Set(all.map(c=>c.step));
 $('#table tbody').innerHTML=all.slice().reverse().map(c=>`<tr data-step="${c.step}" class="${c.is_latest?'latest':''}${fresh.has(c.step)?' fresh':''}"><td>${c.step}</td><td>${esc(c.time_utc||'')}</td><td class="num">${fmtB(Number(c.size_bytes||0)+Number(c.train_size_bytes||0))}</td>
 <td class="mono">${esc((c.uuid||'').slice(0,8))}</td><td>${Object.entries(c.metrics||{}).map(([k,v])=>esc(k)+'='+Number(v).toPrecision(4)).join(' ')}</td>
 <td>${c.pinned?'<span class="pill finished">pinned</span> '+esc(c.pin_reason):''}</td><td>${c.is_latest?'★':''}</td><td class="${c.retention_keeps?'keep':'drop'}">${c.retention_keeps?'keep':'delete'}: ${esc(c.retention_reason||'')}</td></tr>`).join('')||'<tr><td colspan="8" class="empty">No checkpoints yet.</td></tr>';
 draw(all);lineage()}
async function lineage(){const d=await get(`/v1/runs/${encodeURIComponent(run)}/lineage`).catch(()=>({nodes:[]}));drawLineage(d.nodes||[])}
// Lanes: base models on the left, one row per run; a run starts right of
// the checkpoint it branched from; exports hang under their checkpoint.
function drawLineage(ns){const s=$('#lineage');if(!ns.length){s.innerHTML='';return}
 // An export may share its checkpoint's uuid (same tensors): key nodes by kind too.
 const kind=n=>(n.kind||'').replace('KIND_','').toLowerCase(),key=n=>(kind(n)=='export'?'e:':'n:')+n.uuid,pkey=n=>'n:'+n.parent_uuid;
 const by=new Map(ns.map(n=>[key(n),n])),pos=new Map(),lanes=[],laneOf=new Map();
 const runs=[...new Set(ns.filter(n=>n.run_id).map(n=>n.run_id))],bases=ns.filter(n=>kind(n)=='base_model');
 bases.forEach((b,i)=>pos.set(key(b),{x:0,y:i}));let row=bases.length?1:0;
 const steps=r=>ns.filter(n=>n.run_id==r&&(kind(n)=='checkpoint'||kind(n)=='gone'));
 const place=r=>{if(laneOf.has(r))return;laneOf.set(r,-1);const cs=steps(r);const first=cs[0],p=first&&by.get(pkey(first));
  if(p&&p.run_id&&p.run_id!=r)place(p.run_id);const px=p&&pos.has(key(p))?pos.get(key(p)).x:0;
  laneOf.set(r,row);lanes.push([r,row]);cs.forEach((c,i)=>pos.set(key(c),{x:px+1+i,y:row}));
  const ex=ns.filter(n=>kind(n)=='export'&&n.run_id==r);row+=1+(ex.length?1:0)};
 runs.forEach(place);
 const leaf=new Map();ns.filter(n=>kind(n)=='export').forEach(e=>{const p=pos.get(pkey(e));if(!p)return;const k=leaf.get(pkey(e))||0;leaf.set(pkey(e),k+1);pos.set(key(e),{x:p.x+k*0.22,y:p.y+0.75})});
 const maxX=Math.max(1,...[...pos.values()].map(p=>p.x)),W=900,DX=Math.min(90,(W-150)/(maxX+1)),DY=46,X=x=>120+x*DX,Y=y=>24+y*DY,H=Y(row)-DY+30;
 s.setAttribute('viewBox',`0 0 ${W} ${H}`);s.style.height=H+'px';let out='';
 for(const [r,y] of lanes)out+=`<text class="lane" x="4" y="${Y(y)+4}">${esc(r)}</text>`;
 for(const n of ns){const a=pos.get(pkey(n)),b=pos.get(key(n));if(!a||!b||!n.parent_uuid)continue;const mx=(X(a.x)+X(b.x))/2;
  out+=`<path class="edge" d="M${X(a.x)},${Y(a.y)} C${mx},${Y(a.y)} ${mx},${Y(b.y)} ${X(b.x)},${Y(b.y)}"/>`}
 for(const n of ns){const p=pos.get(key(n));if(!p)continue;const k=kind(n),cls=`node ${k=='base_model'?'base':k=='checkpoint'?'ckpt':k}${n.pinned?' pinned':''}${n.is_latest?' latest':''}`;
  const tip=`${k.replace('_',' ')} ${n.uuid}${n.run_id?'\n'+n.run_id+' step '+(n.step||0):''}${n.name?'\n'+n.name:''}${n.file?'\n'+n.file:''}`;
  const label=k=='export'?esc(n.name)+(n.is_latest?' ★':''):k=='base_model'?'base '+esc(n.uuid.slice(0,8)):k=='gone'?'deleted':String(n.step||0)+(n.is_latest?' ★':'');
  const shape=k=='export'?`<rect x="${X(p.x)-5}" y="${Y(p.y)-5}" width="10" height="10" rx="2"/>`:`<circle cx="${X(p.x)}" cy="${Y(p.y)}" r="${k=='base_model'?8:6}"/>`;
  out+=`<g class="${cls}" data-uuid="${esc(n.uuid)}" data-kind="${k}">${shape}<title>${esc(tip)}</title><text x="${X(p.x)+(k=='export'?8:0)}" y="${Y(p.y)+(k=='export'?4:-10)}" text-anchor="${k=='export'?'start':'middle'}">${label}</text></g>`}
 s.innerHTML=out}
function draw(cs){const W=900,H=220,P=34,s=$('#chart');if(cs.length<1){s.innerHTML='';return}
 const xs=cs.map(c=>Number(c.step)),x0=Math.min(...xs),x1=Math.max(...xs)||1,X=v=>P+(W-2*P)*(x1==x0?0.5:(v-x0)/(x1-x0));
 const line=(vals,color)=>{const pts=cs.map((c,i)=>[X(xs[i]),vals[i]]).filter(p=>p[1]!=null&&isFinite(p[1]));if(!pts.length)return'';
  const lo=Math.min(...pts.map(p=>p[1])),hi=Math.max(...pts.map(p=>p[1])),Y=v=>H-P-(H-2*P)*(hi==lo?0.5:(v-lo)/(hi-lo));
  const tag=(v,y,anchor,x)=>`<text class="lbl" x="${x}" y="${y}" text-anchor="${anchor}" fill="${color}">${Number(v.toPrecision(3))}</text>`;
  const side=color=='#2f6fec'?[P-4,'end']:[W-P+4,'start'];
  return `<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(p=>p[0]+','+Y(p[1])).join(' ')}"/>`+pts.map(p=>`<circle cx="${p[0]}" cy="${Y(p[1])}" r="2.5" fill="${color}"/>`).join('')+tag(hi,P+4,side[1],side[0])+tag(lo,H-P,side[1],side[0])};
 const loss=cs.map(c=>c.metrics&&c.metrics.loss!=null?Number(c.metrics.loss):null),size=cs.map(c=>(Number(c.size_bytes||0)+Number(c.train_size_bytes||0))/1048576);
 s.innerHTML=`<line class="axis" x1="${P}" y1="${H-P}" x2="${W-P}" y2="${H-P}"/><text class="lbl" x="${P}" y="${H-10}">step ${x0}</text><text class="lbl" x="${W-P}" y="${H-10}" text-anchor="end">step ${x1}</text>`+line(size,'#c27c0e')+line(loss,'#2f6fec')}
function watch(){if(es)es.close();if(!run)return;es=new EventSource(`/v1/runs/${encodeURIComponent(run)}/events`+(T?'?token='+encodeURIComponent(T):''));
 es.onopen=()=>{$('#live').className='on';$('#live').textContent='live'};es.onerror=()=>{$('#live').className='';$('#live').textContent='reconnecting…'};
 for(const t of['committed','deleted','failed'])es.addEventListener(t,()=>{loadRun();loadRuns()})}
loadRuns().then(()=>{loadRun();watch()}).catch(e=>$('#summary').textContent='error: '+e.message);setInterval(loadRuns,10000);
</script></body></html>
)html";

}  // namespace ckptd::http
