#include "textflag.h"

// func prefetchLines(p unsafe.Pointer, n uintptr) uint64
TEXT ·prefetchLines(SB), NOSPLIT, $0-24
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	LEAQ -1(AX)(CX*1), DX // the last byte
loop:
	PREFETCHT0 (AX)
	ADDQ $64, AX
	CMPQ AX, DX
	JLS  loop
	PREFETCHT0 (DX)
	MOVQ $0, ret+16(FP)
	RET
