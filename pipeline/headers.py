"""What the packet index reads from codec headers, without decoding: how many frames a VP8/VP9 packet shows, how
many frames an H.264/HEVC decoder may hold back (its sequence parameter set), and a decoded frame's bit depth and
chroma format.

Why: the GOP-slice paths (DALI's IVF slices, the NVDEC backend) take packet k of a file to be frame k. That holds
when every packet shows exactly one frame: true of prepare_data.py's output and of FFmpeg's VP9 (its muxers pack
an alt-ref frame with the next shown frame into one superframe), not of VP8/VP9 written by other muxers, which
may store a hidden frame in a packet of its own. NVDEC's low-latency mode also needs the H.264/HEVC stream to say
that no frame waits for reordering (max_num_reorder_frames = 0), and its NV12 output needs 8-bit 4:2:0.

    shown_frames(codec, payload)  frames one packet shows (VP8/VP9 frame headers, VP9 superframe index)
    reorder_depth(codec, nals)    H.264 max_num_reorder_frames / HEVC sps_max_num_reorder_pics from the SPS
    pixel_layout(format_name)     (bit depth, chroma code) of a pixel format, e.g. "yuv420p" -> (8, CHROMA_420)

Costs a few microseconds a packet (one or two header bytes); the SPS is parsed once per video.
"""

from __future__ import annotations

# Chroma format codes, numbered as NVDEC's cudaVideoChromaFormat; CHROMA_OTHER: RGB, palette, 4:1:1, ...
CHROMA_400, CHROMA_420, CHROMA_422, CHROMA_444, CHROMA_OTHER = 0, 1, 2, 3, 255
CHROMA_NAMES = {CHROMA_400: "4:0:0", CHROMA_420: "4:2:0", CHROMA_422: "4:2:2", CHROMA_444: "4:4:4",
                CHROMA_OTHER: "non-YUV or unusual subsampling"}
REORDER_UNKNOWN = -1  # the stream does not say (H.264 without VUI bitstream_restriction) or was not parsed


def shown_frames(codec: str, payload: bytes) -> int:
    """How many frames packet `payload` of a `codec` stream shows; 1 for codecs other than VP8/VP9.

    VP9 (spec, Annex B and section 6.2): a packet is one frame or a superframe (frames back to back, then an
    index whose first and last byte is the marker 0b110SSNNN: N + 1 frames, S + 1 bytes per little-endian
    size). A frame is shown when show_existing_frame or show_frame is set in the first byte of its
    uncompressed header: frame_marker (2 bits, 0b10), profile_low_bit, profile_high_bit, reserved_zero (profile
    3 only), show_existing_frame, frame_type, show_frame. A frame without a valid frame_marker shows nothing.
    VP8 (RFC 6386 9.1): show_frame is bit 4 of the 3-byte frame tag.
    """
    if codec == "vp9":
        return sum(_vp9_frame_shown(f) for f in vp9_frames(payload))
    if codec == "vp8":
        return int(len(payload) >= 3 and bool(payload[0] & 0x10))
    return 1


def vp9_frames(payload: bytes) -> list[bytes]:
    """The frames of one VP9 packet: the superframe's frames in order, or the packet itself."""
    if not payload:
        return []
    marker = payload[-1]
    if marker & 0xE0 == 0xC0:
        count, size_bytes = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index = 2 + size_bytes * count
        if len(payload) >= index and payload[-index] == marker:
            frames, pos, end = [], 0, len(payload) - index
            for k in range(count):
                at = len(payload) - index + 1 + k * size_bytes
                size = int.from_bytes(payload[at:at + size_bytes], "little")
                if pos + size > end:  # sizes past the data: not a superframe index after all
                    return [payload]
                frames.append(payload[pos:pos + size])
                pos += size
            return frames
    return [payload]


def _vp9_frame_shown(frame: bytes) -> int:
    if not frame or frame[0] >> 6 != 0b10:  # frame_marker
        return 0
    profile = ((frame[0] >> 5) & 1) | (((frame[0] >> 4) & 1) << 1)
    bit = 3 if profile < 3 else 2  # bit of show_existing_frame in the first byte (profile 3: a reserved bit first)
    if (frame[0] >> bit) & 1:
        return 1
    return (frame[0] >> (bit - 2)) & 1  # show_frame, after frame_type


# ---- H.264 / HEVC sequence parameter sets -----------------------------------------------------------------------


class _Bits:
    """MSB-first reader of an RBSP (emulation prevention bytes removed); reading past the end raises ValueError."""

    def __init__(self, rbsp: bytes):
        self.value, self.size, self.pos = int.from_bytes(rbsp, "big"), 8 * len(rbsp), 0

    def u(self, n: int) -> int:
        if self.pos + n > self.size:
            raise ValueError("SPS ends early")
        self.pos += n
        return (self.value >> (self.size - self.pos)) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("SPS: Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def rbsp(nal: bytes) -> bytes:
    """A NAL unit's payload with the emulation prevention bytes (0x03 after two zero bytes) removed."""
    out, zeros = bytearray(), 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


# H.264 profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices (7.3.2.1.1).
_H264_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)
# Intra profiles: with constraint_set3_flag, max_num_reorder_frames is inferred to be 0 (E.2.1).
_H264_INTRA_PROFILES = (44, 86, 100, 110, 122, 244)


def h264_reorder(sps: bytes) -> int:
    """max_num_reorder_frames of an H.264 SPS NAL unit (header byte included), from its VUI's
    bitstream_restriction (ITU-T H.264 7.3.2.1.1, E.1.1); when absent, 0 for an intra profile with
    constraint_set3_flag, else REORDER_UNKNOWN (the spec then infers MaxDpbFrames: a decoder may hold back a
    whole DPB). Raises ValueError on a malformed SPS."""
    r = _Bits(rbsp(sps[1:]))
    profile, constraints = r.u(8), r.u(8)
    r.u(8)  # level_idc
    r.ue()  # seq_parameter_set_id
    if profile in _H264_HIGH_PROFILES:
        chroma_format = r.ue()
        if chroma_format == 3:
            r.u(1)  # separate_colour_plane_flag
        r.ue(), r.ue()  # bit_depth_luma_minus8, bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format != 3 else 12):
                if r.u(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    r.ue(), r.ue()  # pic_width_in_mbs_minus1, pic_height_in_map_units_minus1
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)
    r.u(1)  # direct_8x8_inference_flag
    if r.u(1):  # frame_cropping_flag
        for _ in range(4):
            r.ue()
    inferred = 0 if profile in _H264_INTRA_PROFILES and constraints & 0x10 else REORDER_UNKNOWN
    if not r.u(1):  # vui_parameters_present_flag
        return inferred
    if r.u(1) and r.u(8) == 255:  # aspect_ratio_info_present_flag, aspect_ratio_idc: Extended_SAR
        r.u(16), r.u(16)
    if r.u(1):  # overscan_info_present_flag
        r.u(1)
    if r.u(1):  # video_signal_type_present_flag
        r.u(3), r.u(1)
        if r.u(1):
            r.u(24)
    if r.u(1):  # chroma_loc_info_present_flag
        r.ue(), r.ue()
    if r.u(1):  # timing_info_present_flag
        r.u(32), r.u(32), r.u(1)
    hrd = 0
    for _ in range(2):  # nal_hrd_parameters_present_flag, vcl_hrd_parameters_present_flag
        if r.u(1):
            hrd += 1
            _skip_h264_hrd(r)
    if hrd:
        r.u(1)  # low_delay_hrd_flag
    r.u(1)  # pic_struct_present_flag
    if not r.u(1):  # bitstream_restriction_flag
        return inferred
    r.u(1)
    for _ in range(4):  # max_bytes_per_pic_denom .. log2_max_mv_length_vertical
        r.ue()
    return r.ue()  # max_num_reorder_frames


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last


def _skip_h264_hrd(r: _Bits) -> None:
    count = r.ue() + 1  # cpb_cnt_minus1
    r.u(4), r.u(4)
    for _ in range(count):
        r.ue(), r.ue(), r.u(1)
    r.u(20)  # four 5-bit lengths


def hevc_reorder(sps: bytes) -> int:
    """sps_max_num_reorder_pics of the highest sub-layer of an HEVC SPS NAL unit (2-byte header included),
    ITU-T H.265 7.3.2.2. Raises ValueError on a malformed SPS."""
    r = _Bits(rbsp(sps[2:]))
    r.u(4)  # sps_video_parameter_set_id
    sub_layers = r.u(3)  # sps_max_sub_layers_minus1
    r.u(1)
    r.u(96)  # general profile, tier and level (7.3.3)
    flags = [(r.u(1), r.u(1)) for _ in range(sub_layers)]  # sub_layer_profile/level_present_flag
    if sub_layers:
        r.u(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in flags:
        r.u(88 * profile_present + 8 * level_present)
    r.ue()  # sps_seq_parameter_set_id
    if r.ue() == 3:  # chroma_format_idc
        r.u(1)
    r.ue(), r.ue()  # pic_width/height_in_luma_samples
    if r.u(1):  # conformance_window_flag
        for _ in range(4):
            r.ue()
    r.ue(), r.ue(), r.ue()  # bit depths, log2_max_pic_order_cnt_lsb_minus4
    every_layer = r.u(1)  # sps_sub_layer_ordering_info_present_flag
    reorder = 0
    for _ in range(0 if every_layer else sub_layers, sub_layers + 1):
        r.ue()  # sps_max_dec_pic_buffering_minus1
        reorder = r.ue()  # sps_max_num_reorder_pics
        r.ue()  # sps_max_latency_increase_plus1
    return reorder


def split_nals(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of `data`: length-prefixed (length_size 1, 2 or 4, MP4 style) or, with length_size 0,
    Annex-B (start codes 00 00 01 / 00 00 00 01). Damaged length prefixes end the list early."""
    if length_size:
        out, pos = [], 0
        while pos + length_size <= len(data):
            n = int.from_bytes(data[pos:pos + length_size], "big")
            if n == 0 or pos + length_size + n > len(data):
                break
            out.append(data[pos + length_size:pos + length_size + n])
            pos += length_size + n
        return out
    return [u.rstrip(b"\x00") for u in data.split(b"\x00\x00\x01") if u.strip(b"\x00")]


def reorder_depth(codec: str, nals: list[bytes]) -> int:
    """Frames a decoder of this stream may hold back before showing one: 0 for VP8/VP9 (no reordering), from
    the first SPS among `nals` for H.264/HEVC (h264_reorder, hevc_reorder); REORDER_UNKNOWN when there is no
    SPS, it cannot be parsed, or for other codecs."""
    if codec in ("vp8", "vp9"):
        return 0
    for nal in nals:
        try:
            if codec == "h264" and nal and nal[0] & 0x1F == 7:
                return h264_reorder(nal)
            if codec == "hevc" and nal and (nal[0] >> 1) & 0x3F == 33:
                return hevc_reorder(nal)
        except ValueError:
            return REORDER_UNKNOWN
    return REORDER_UNKNOWN


def pixel_layout(format_name: str) -> tuple[int, int]:
    """(bits per luma sample, chroma code) of a PyAV/FFmpeg pixel format: yuv420p and yuvj420p -> (8,
    CHROMA_420), yuv420p10le -> (10, CHROMA_420), yuv422p -> (8, CHROMA_422), gray -> (8, CHROMA_400), rgb24 or
    an unknown name -> (8 or 0, CHROMA_OTHER)."""
    import av

    try:
        fmt = av.VideoFormat(format_name)
    except (ValueError, av.FFmpegError):
        return 0, CHROMA_OTHER
    components = fmt.components
    depth = int(components[0].bits) if components else 0
    if fmt.is_rgb or fmt.has_palette or fmt.is_bayer or not components:
        return depth, CHROMA_OTHER
    if len([c for c in components if not c.is_alpha]) == 1:  # gray, ya8
        return depth, CHROMA_400
    ratio = (64 // max(fmt.chroma_width(64), 1), 64 // max(fmt.chroma_height(64), 1))  # subsampling, x and y
    return depth, {(2, 2): CHROMA_420, (2, 1): CHROMA_422, (1, 1): CHROMA_444}.get(ratio, CHROMA_OTHER)
