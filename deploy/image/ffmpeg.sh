#!/bin/sh
# Builds the image's ffmpeg: audio only, with just what worker/media/audio.py asks of it. Run inside an
# unpacked ffmpeg source tree (the Dockerfile takes Debian's, `apt-get source ffmpeg`):
#     sh ffmpeg.sh PREFIX AUDIO_PY
# - demuxers: exactly the whitelist audio.py passes as -format_whitelist (DEMUXERS, read from its source),
#   so a container the worker refuses is not even in the binary;
# - decoders: every audio decoder ffmpeg has (libavcodec/allcodecs.c between "audio codecs" and
#   "subtitles": PCM, DPCM and ADPCM included) and the audio parsers, no video, image or subtitle one;
# - out: the file protocol, raw s16le PCM (the pcm_s16le encoder and muxer), resampling and downmixing
#   (libswresample behind aresample/aformat) and atrim (the -t limit);
# - no external library, no device, no network, no hardware acceleration: the binary needs libc,
#   libm and zlib (matroska's and mov's compressed headers), which every Debian has.
set -eu
prefix=$1
audio_py=$2

# The whitelist's format names, as configure names its demuxers ("mpeg" is the mpegps demuxer; webm is
# the matroska one).
demuxers=$(python3 -c "
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
value = next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == 'DEMUXERS')
names = {'mpeg': 'mpegps', 'webm': 'matroska'}
print(','.join(sorted({names.get(n, n) for n in value.split(',')})))
" "$audio_py")
decoders=$(sed -n '/\/\* audio codecs \*\//,/\/\* subtitles \*\//p' libavcodec/allcodecs.c \
  | sed -n 's/.*ff_\([a-z0-9_]*\)_decoder;.*/\1/p' | paste -sd, -)

# The audio parsers (raw streams and those in MPEG-PS/TS are split into frames by them); the video ones,
# h264's and hevc's above all, are a good part of the build's time and never used.
parsers=aac,aac_latm,ac3,adx,amr,cook,dca,dolby_e,dvaudio,flac,g723_1,g729,gsm,mlp,mpegaudio,opus,sbc,sipr,tak,vorbis,xma

known=$(./configure --list-demuxers | tr -s ' \t' '\n\n')
for name in $(echo "$demuxers" | tr , ' '); do  # a name configure does not know would be dropped silently
  printf '%s\n' "$known" | grep -qx "$name" || { echo "no demuxer $name" >&2; exit 1; }
done

./configure --prefix="$prefix" \
  --disable-everything --disable-autodetect --disable-doc --disable-debug \
  --disable-ffplay --disable-ffprobe --disable-network --disable-avdevice --disable-swscale \
  --enable-zlib \
  --enable-protocol=file \
  --enable-demuxer="$demuxers" \
  --enable-decoder="$decoders" \
  --enable-parser="$parsers" \
  --enable-encoder=pcm_s16le --enable-muxer=pcm_s16le \
  --enable-filter=abuffer,abuffersink,aformat,anull,aresample,atrim
make -j"$(nproc)"
make install
