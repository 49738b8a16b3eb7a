/* The plan of one convolution: geometry, offset tables and scratch sizes,
 * worked out once per call by conv.inc's make_plan and shared read-only by
 * the threads. winograd.inc reads the geometry from it too. The layout does
 * not depend on the float type, so it is a header: it stands alone, and the
 * code that fills it in lives in conv.inc.
 */
#ifndef FC_CONV_PLAN_H
#define FC_CONV_PLAN_H

#include <stdint.h>
#include <stdlib.h>

#include "fastconv.h"

typedef struct {
    int64_t channels, filters;  /* C in, F out */
    const fc_window *g;
    int64_t k;                  /* C*KH*KW: depth of the forward product */
    int64_t plane;              /* OH*OW: output pixels per image */
    /* Distance between consecutive images of x and of y: C*H*W and F*OH*OW,
     * or the whole image's when the plan covers one group of a grouped
     * convolution, whose channels are a slice of each image. */
    int64_t x_image, y_image;
    int shifted;                /* stride 1: read taps from the padded image */
    /* shifted: the padded image, (C, Hp, Wp) plus `slack` zeros, and the
     * wide output grid of `wide` = OH*Wp columns rounded up to a vector. */
    int64_t hp, wp, padded_plane, slack, wide;
    /* unfolded: columns (K, OH*OW) with row stride ld. */
    int64_t ld;
    int64_t *tap_rows;          /* (K,): where tap row k starts in the padded image or columns */
    int64_t *weight_rows;       /* (F,): r*K, rows of the weight matrix */
} conv_plan;

static void free_plan(conv_plan *p)
{
    free(p->tap_rows);
    free(p->weight_rows);
}

#endif
