const n = 1024000; const bytes = new Uint8Array(n*4); for (let i=0;i<bytes.length;i++) bytes[i]=i*31;
function a(bytes,entries){const bat=new Uint32Array(entries);for(let i=0,o=0;i<entries;i++,o+=4){bat[i]=((bytes[o]<<24)|(bytes[o+1]<<16)|(bytes[o+2]<<8)|bytes[o+3])>>>0;}return bat;}
function b(bytes,entries){const bat=new Uint32Array(entries);const dv=new DataView(bytes.buffer,bytes.byteOffset,entries*4);for(let i=0;i<entries;i++)bat[i]=dv.getUint32(i*4);return bat;}
function c(bytes,entries){const bat=new Uint32Array(entries); new Uint8Array(bat.buffer).set(bytes.subarray(0,entries*4)); Buffer.from(bat.buffer).swap32(); return bat;}
for (const [nm,f] of [['bytes',a],['dataview',b],['swap32',c],['bytes',a],['dataview',b],['swap32',c]]) { const t=performance.now(); for(let k=0;k<50;k++) f(bytes,n); console.log(nm, ((performance.now()-t)/50).toFixed(2),'ms'); }
console.log(a(bytes,n).every((v,i)=>v===c(bytes,n)[i]) ? 'same':'DIFF');
