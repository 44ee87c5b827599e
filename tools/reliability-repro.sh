#!/usr/bin/env bash
# The reliability issue's reproductions (bad files, odd flags, Ctrl-C), one
# line of outcome each, for any gpurt binary: run it on an old and a new
# build to see each defect's behaviour before and after.
#
#   tools/reliability-repro.sh BIN WORKDIR      (WORKDIR is emptied first)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "$1"); W=$2; rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
D="--data mnist:$root/data/mnist"
q() { "$@" > out.txt 2> err.txt; echo $?; }
$BIN train $D --limit 2000 --epochs 1 --out base --quiet > /dev/null 2>&1
ckjson() { python3 - "$@" <<'PY'
import json,sys,os
p=sys.argv[1]; k=sys.argv[2]; v=json.loads(sys.argv[3])
d=json.load(open(p)); d[k]=v; open(p,'w').write(json.dumps(d))
PY
}
# 1
$BIN train $D --model mlp --limit 2000 --epochs 1 --out runs/latest --quiet >/dev/null 2>&1
cp -a base B
rc=$(q $BIN train $D --resume B --epochs 2 --limit 2000 --quiet)
echo "1 resume-no-out: exit $rc; runs/latest model=$(python3 -c "import json;print(json.load(open('runs/latest/checkpoint.json'))['spec']['name'])" 2>&1) B epoch=$(python3 -c "import json;print(json.load(open('B/checkpoint.json'))['epoch'])") | $(tail -c 200 err.txt)"
# 3
cp -a base d; rc=$(q $BIN train $D --lr 1e3 --resume d --out d --limit 2000 --epochs 3 --quiet)
echo "3 adam lr 1e3: exit $rc; $(grep -o 'test: .*' out.txt) ckpt epoch=$(python3 -c "import json;print(json.load(open('d/checkpoint.json'))['epoch'])") | $(tail -c 150 err.txt)"
# 4
cp -a base n4; ckjson n4/checkpoint.json mean '[0.1,0.2]'
python3 -c "
import struct,zlib
def chunk(t,d): return struct.pack('>I',len(d))+t+d+struct.pack('>I',zlib.crc32(t+d)&0xffffffff)
raw=b''.join(b'\x00'+bytes((x*9+y*3)%256 for x in range(28)) for y in range(28))
open('digit.png','wb').write(b'\x89PNG\r\n\x1a\n'+chunk(b'IHDR',struct.pack('>IIBBBBB',28,28,8,0,0,0,0))+chunk(b'IDAT',zlib.compress(raw))+chunk(b'IEND',b''))"
rc=$(q $BIN predict --run n4 digit.png); echo "4 mean [0.1,0.2] predict: exit $rc | $(grep -m1 -o 'panicked.*\|error.*' err.txt | head -c 150)"
# 5
cp -a base n5
python3 - <<'PY'
import json,struct,os,glob
ck=json.load(open('n5/checkpoint.json')); p=os.path.join('n5',ck['files'],'model.safetensors')
b=bytearray(open(p,'rb').read()); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n])
off=h['fc2.bias']['data_offsets'][0]; b[8+n+off:8+n+off+4]=struct.pack('<f',float('nan'))
open(p,'wb').write(b); 
if os.path.islink('n5/model.safetensors') is False: open('n5/model.safetensors','wb').write(b)
PY
rc=$(q $BIN predict --run n5 digit.png); echo "5 fc2.bias NaN predict: exit $rc | $(head -c 120 out.txt) $(tail -c 150 err.txt)"
# 6
cp -a base n6; s=$(ls n6/ckpt | head -1); cp -r n6/ckpt/$s n6/ckpt/keep-epoch1
$BIN train $D --resume n6 --out n6 --limit 2000 --epochs 2 --quiet >/dev/null 2>&1
echo "6 keep-epoch1 after resume: $(ls n6/ckpt | tr '\n' ' ')"
# 8
mkdir -p m8; cp "$root"/data/mnist/* m8/; python3 - <<'PY'
import gzip,struct,os,glob
f=[x for x in glob.glob('m8/t10k-images*')][0]
op=gzip.open if f.endswith('.gz') else open
d=op(f,'rb').read(); n=struct.unpack('>I',d[4:8])[0]
px=(d[16:]*2)[:n*32*32]
op(f,'wb').write(d[:4]+struct.pack('>III',n,32,32)+px)
PY
rc=$(q $BIN train --data mnist:m8 --limit 2000 --epochs 1 --out o8 --quiet); echo "8 test 32x32: exit $rc; trained=$(grep -c 'epoch 1/1' out.txt) | $(tail -c 150 err.txt)"
# 9
$BIN train $D --limit 20000 --epochs 1 --out o9 --quiet > /dev/null 2>&1 & pid=$!; sleep 1.5; kill -INT $pid; wait $pid; echo "9 Ctrl-C: exit $?"
# 10
printf 'name="t"\n[[layer]]\ntype="flatten"\n[[layer]]\ntype="dense"\nunits=10\n[[layer]]\ntype="relu"\nslope=0.1\n' > r.toml
rc=$(q $BIN plan --model r.toml); echo "10 relu slope=0.1: exit $rc | $(tail -c 100 err.txt)"
# 11
rc=$(q $BIN train $D --optimizer sgd --lr 1e3 --limit 2000 --epochs 3 --out o11 --quiet); echo "11 sgd lr 1e3: exit $rc; files in o11: $(ls o11 2>/dev/null | wc -l) | $(tail -c 120 err.txt)"
rc=$(q $BIN train $D --weight-decay=-1 --limit 500 --epochs 1 --out o11b --quiet); echo "11 weight-decay -1: exit $rc | $(tail -c 100 err.txt)"
# 12
rc=$(timeout 20 $BIN train $D --epochs 4611686018427387904 --lr-schedule cosine --limit 500 --out o12 --quiet > out.txt 2> err.txt; echo $?); echo "12 epochs 2^62 cosine: exit $rc; $(head -1 out.txt | cut -c1-80) | $(tail -c 100 err.txt)"
cp -a base n12; ckjson n12/checkpoint.json epoch 18446744073709551615
rc=$(q $BIN train $D --resume n12 --out n12 --limit 2000 --epochs 2 --quiet); echo "12 epoch u64::MAX resume: exit $rc; $(grep -o 'epoch [0-9]*/2' out.txt | tr '\n' ' ') | $(tail -c 100 err.txt)"
# 13
cp -a base n13; ckjson n13/checkpoint.json std '[0]'
rc=$(q $BIN eval --run n13); echo "13 std [0] eval: exit $rc; $(head -1 out.txt | grep -o 'loss.*') | $(tail -c 100 err.txt)"
# 14
rc=$(q $BIN train $D --crop-pad 1000 --limit 2000 --epochs 1 --out o14 --quiet); echo "14 crop-pad 1000: exit $rc; $(grep -o 'test: .*' out.txt) | $(tail -c 100 err.txt)"
# minor: OS error twice
rc=$(q $BIN eval --run /nonexistent); echo "minor os error: exit $rc | $(cat err.txt)"
