/* Unit tests for src/lib/termfilter.c (THREATS.md A20). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/termfilter.h"
#include "nbtest.h"

typedef struct {
    uint8_t buf[65536];
    size_t n;
    int calls;
} sink_t;

static void on_out(void *ud, const uint8_t *p, size_t n)
{
    sink_t *s = ud;
    s->calls++;
    if (s->n + n > sizeof s->buf)
        abort();
    memcpy(s->buf + s->n, p, n);
    s->n += n;
}

static nb_termfilter_t F; /* 4 KiB+: static, not on the stack */
static sink_t S, S2;

/* Filters `in` (len bytes) in chunks of `step` (0: whole) into S; returns S as a
 * NUL-terminated string. */
static const char *run_n(const void *in, size_t len, size_t step)
{
    const uint8_t *p = in;
    nb_termfilter_init(&F);
    S.n = 0;
    S.calls = 0;
    if (!step)
        step = len ? len : 1;
    for (size_t i = 0; i < len; i += step)
        nb_termfilter_feed(&F, p + i, len - i < step ? len - i : step, on_out, &S);
    nb_termfilter_finish(&F, on_out, &S);
    S.buf[S.n] = 0;
    return (const char *)S.buf;
}

static const char *run(const char *in)
{
    return run_n(in, strlen(in), 0);
}

static uint64_t blocked(nb_termfilter_kind_t k)
{
    nb_termfilter_stats_t st = {0};
    nb_termfilter_stats(&F, &st);
    return st.blocked[k];
}

static uint64_t total(void)
{
    nb_termfilter_stats_t st = {0};
    nb_termfilter_stats(&F, &st);
    return st.total;
}

/* Output never holds OSC 52 in any form: no ESC ] 5 2, and the output is
 * valid UTF-8 without C1 code points (so no 8-bit OSC either). */
static int has_osc52(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 3 < n; i++)
        if (p[i] == 0x1b && p[i + 1] == ']' && p[i + 2] == '5' && p[i + 3] == '2')
            return 1;
    for (size_t i = 0; i < n;) {
        size_t k = p[i] < 0x80 ? 1 : p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : p[i] >= 0xc2 ? 2 : 0;
        if (!k || i + k > n || (p[i] == 0xc2 && p[i + 1] < 0xa0))
            return 1;
        for (size_t j = 1; j < k; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                return 1;
        i += k;
    }
    return 0;
}

/* Splitting the input at every byte boundary (two chunks) and byte by byte
 * gives the same output and counts as feeding it whole. */
static void check_split(const char *in, size_t len)
{
    uint64_t t;
    run_n(in, len, 0);
    memcpy(S2.buf, S.buf, S.n);
    S2.n = S.n;
    t = total();
    for (size_t cut = 0; cut <= len; cut++) {
        nb_termfilter_init(&F);
        S.n = 0;
        nb_termfilter_feed(&F, (const uint8_t *)in, cut, on_out, &S);
        nb_termfilter_feed(&F, (const uint8_t *)in + cut, len - cut, on_out, &S);
        nb_termfilter_finish(&F, on_out, &S);
        NB_CHECK(S.n == S2.n && memcmp(S.buf, S2.buf, S.n) == 0);
        NB_CHECK_EQ_INT(total(), t);
    }
    run_n(in, len, 1);
    NB_CHECK(S.n == S2.n && memcmp(S.buf, S2.buf, S.n) == 0);
}

static void test_A20_osc52_bel_and_st(void)
{
    /* the checker itself can fail */
    NB_CHECK(has_osc52((const uint8_t *)"\x1b]52;", 5));
    NB_CHECK(has_osc52((const uint8_t *)"\xc2\x9d", 2) && has_osc52((const uint8_t *)"\x9d", 1));
    NB_CHECK_STR(run("a\x1b]52;c;ZWNobyBwd25lZA==\x07"
                     "b"),
                 "ab");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
    NB_CHECK_STR(run("a\x1b]52;c;ZWNobyBwd25lZA==\x1b\\b"), "ab");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
    NB_CHECK_EQ_INT(total(), 1);
    /* query form, empty selection, kitty's OSC 5522 */
    NB_CHECK_STR(run("\x1b]52;c;?\x07\x1b]52;;Zm9v\x1b\\\x1b]5522;type=write\x07ok"), "ok");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 3);
    /* aborted by ESC x: dropped, and the following sequence still parsed */
    NB_CHECK_STR(run("\x1b]52;c;Zm9v\x1b[1mX"), "\x1b[1mX");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
    /* CAN cancels it */
    NB_CHECK_STR(run("\x1b]52;c;Zm9v\x18Y"), "Y");
    /* unterminated at the end of the stream: dropped, counted */
    NB_CHECK_STR(run("x\x1b]52;c;Zm9v"), "x");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
}

static void test_A20_split_every_boundary(void)
{
    static const char in[] =
        "hi \x1b[1;31mred\x1b[0m \xc3\xa9t\xc3\xa9 \xe2\x80\x9cq\xe2\x80\x9d \xf0\x9f\x98\x80"
        "\x1b]0;my title\x07\x1b]52;c;Zm9v\x1b\\\x1bPtmux;\x1b\x1b]52;c;Zm9v\x07\x1b\\"
        "\x9d"
        "52;c;Zm9v\x07\xc2\x9d"
        "52;x\x07\x1b[21t\x1b]8;;https://e.x/\x1b\\L\x1b]8;;\x1b\\"
        "\x1b_Gf=1;AAAA\x1b\\\xff\xc3(end\r\n";
    check_split(in, sizeof in - 1);
    run_n(in, sizeof in - 1, 0);
    NB_CHECK(!has_osc52(S.buf, S.n));
}

static void test_A20_tmux_passthrough(void)
{
    /* tmux wraps an inner OSC 52 in DCS tmux; with ESC doubled */
    NB_CHECK_STR(run("A\x1bPtmux;\x1b\x1b]52;c;Zm9v\x07\x1b\\B"), "AB");
    NB_CHECK(total() >= 1);
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
    NB_CHECK(!has_osc52(S.buf, S.n));
    /* a DCS holding a BEL and text is skipped up to ST, not BEL */
    NB_CHECK_STR(run("A\x1bP$qm\x07still dcs\x1b\\B"), "AB");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_STRING), 1);
    /* APC (kitty graphics), PM, SOS */
    NB_CHECK_STR(run("\x1b_Ga=T;AAAA\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\z"), "z");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_STRING), 3);
}

static void test_A20_c1_forms(void)
{
    /* raw 8-bit introducers, not part of valid UTF-8 */
    NB_CHECK_STR(run("a\x9d"
                     "52;c;Zm9v\x07"
                     "b"),
                 "ab");
    NB_CHECK_STR(run("a\x9d"
                     "0;t\x9c"
                     "b"),
                 "ab");
    NB_CHECK_STR(run("a\x90qDCS\x9c"
                     "b\x9fx\x9c\x9ey\x9c\x98z\x9c"
                     "c"),
                 "abc");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_C1), 4);
    NB_CHECK_STR(run("a\x9b"
                     "21tb"),
                 "ab");
    NB_CHECK_STR(run("a\x85\x84"
                     "b"),
                 "ab"); /* NEL, IND */
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_C1), 2);
    /* UTF-8 encoded C1 (U+009D) is a control too */
    NB_CHECK_STR(run("a\xc2\x9d"
                     "52;c;Zm9v\x07"
                     "b"),
                 "ab");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_C1), 1);
    /* 0x9d as a UTF-8 continuation is text: U+201D and U+075D pass */
    NB_CHECK_STR(run("\xe2\x80\x9d\xdd\x9d"), "\xe2\x80\x9d\xdd\x9d");
    NB_CHECK_EQ_INT(total(), 0);
    /* an overlong lead (E0 needs A0-BF) does not hide an introducer */
    NB_CHECK_STR(run("\xe0\x9d"
                     "52;x\x07!"),
                 "\xef\xbf\xbd!");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_C1), 1);
    /* ESC followed by a C1 */
    NB_CHECK_STR(run("\x1b\x9d"
                     "52;x\x07!"),
                 "!");
}

static void test_A20_long_osc_bounded(void)
{
    /* allowed kind but over the cap: dropped whole, memory stays fixed */
    static char big[3 * NB_TERMFILTER_STRING_MAX];
    size_t n = 0;
    memcpy(big, "<\x1b]2;", 5);
    n = 5;
    while (n < sizeof big - 3)
        big[n++] = 'T';
    big[n++] = 0x07;
    big[n++] = '>';
    NB_CHECK_STR(run_n(big, n, 0), "<>");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_MALFORMED), 1);
    NB_CHECK_EQ_INT(sizeof(nb_termfilter_t) < NB_TERMFILTER_STRING_MAX + 256, 1);
    /* unterminated OSC 52 of 1 MiB, fed in pieces: nothing of it comes out */
    nb_termfilter_init(&F);
    S.n = 0;
    nb_termfilter_feed(&F, (const uint8_t *)"\x1b]52;c;", 7, on_out, &S);
    memset(big, 'A', sizeof big);
    for (int i = 0; i < 85; i++)
        nb_termfilter_feed(&F, (const uint8_t *)big, sizeof big, on_out, &S);
    NB_CHECK_EQ_INT(S.n, 0);
    nb_termfilter_feed(&F, (const uint8_t *)"\x07ok", 3, on_out, &S);
    NB_CHECK(S.n == 2 && memcmp(S.buf, "ok", 2) == 0);
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_CLIPBOARD), 1);
    /* an overlong CSI */
    memset(big, '1', 600);
    memcpy(big, "\x1b[", 2);
    big[600] = 'm';
    big[601] = 'k';
    NB_CHECK_STR(run_n(big, 602, 0), "k");
}

static void test_A20_text_utf8_colours_pass(void)
{
    static const char txt[] =
        "plain text\r\n\ttab\bback \xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\x07\x1b[1;38;5;208mX"
        "\x1b[38:2::255:0:0mY\x1b[0m\x1b[2J\x1b[H\x1b[?25l\x1b[?1049h\x1b[?2004h\x1b[6n"
        "\x1b[c\x1b[>c\x1b[18t\x1b[22;0t\x1b[23;0t\x1b(0q\x1b(B\x1b"
        "7\x1b"
        "8\x1b=\x1b>\x1bM"
        "\x1b[?1000h\x1b[>1u\x1b[5 q\x1b%G";
    const char *o = run(txt);
    NB_CHECK_STR(o, txt);
    NB_CHECK_EQ_INT(total(), 0);
    /* a C0 control inside a CSI is executed first, then the sequence */
    NB_CHECK_STR(run("\x1b[1\n;2H"), "\n\x1b[1;2H");
    /* invalid UTF-8 becomes U+FFFD; stray continuation too */
    NB_CHECK_STR(run("a\xffz\xc3(\xbf"), "a\xef\xbf\xbdz\xef\xbf\xbd(\xef\xbf\xbd");
    /* a sequence split across calls is held, then written whole */
    nb_termfilter_init(&F);
    S.n = 0;
    nb_termfilter_feed(&F, (const uint8_t *)"ab\x1b[3", 5, on_out, &S);
    NB_CHECK(S.n == 2);
    nb_termfilter_feed(&F, (const uint8_t *)"1mc", 3, on_out, &S);
    NB_CHECK(S.n == 8 && memcmp(S.buf, "ab\x1b[31mc", 8) == 0);
}

static void test_A20_titles_pass(void)
{
    NB_CHECK_STR(run("\x1b]0;user@vm: ~\x07"), "\x1b]0;user@vm: ~\x07");
    NB_CHECK_STR(run("\x1b]2;\xc3\xa9t\xc3\xa9 \xe2\x80\x9cx\xe2\x80\x9d\x1b\\"),
                 "\x1b]2;\xc3\xa9t\xc3\xa9 \xe2\x80\x9cx\xe2\x80\x9d\x1b\\");
    NB_CHECK_STR(run("\x1b]1;icon\x9c"), "\x1b]1;icon\x1b\\"); /* 8-bit ST -> 7-bit */
    NB_CHECK_EQ_INT(total(), 0);
    /* a title with control characters is dropped */
    NB_CHECK_STR(run("\x1b]0;a\rb\x07"), "");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_MALFORMED), 1);
    /* long titles are cut at a character boundary */
    {
        static char in[1200];
        size_t n = 4;
        memcpy(in, "\x1b]0;", 4);
        while (n < 4 + 600) {
            memcpy(in + n, "\xc3\xa9", 2);
            n += 2;
        }
        in[n++] = 0x07;
        run_n(in, n, 0);
        NB_CHECK_EQ_INT(S.n, 4 + NB_TERMFILTER_TITLE_MAX + 1);
        NB_CHECK(memcmp(S.buf, in, 4 + NB_TERMFILTER_TITLE_MAX) == 0);
        NB_CHECK_EQ_INT(S.buf[S.n - 1], 0x07);
    }
    /* once cut, nothing more is kept (no gap in the middle) */
    {
        static char in[300];
        memcpy(in, "\x1b]2;", 4);
        memset(in + 4, 'a', NB_TERMFILTER_TITLE_MAX - 1);
        memcpy(in + 4 + NB_TERMFILTER_TITLE_MAX - 1,
               "\xc3\xa9"
               "b\x07",
               4);
        run_n(in, 4 + NB_TERMFILTER_TITLE_MAX + 3, 0);
        NB_CHECK_EQ_INT(S.n, 4 + NB_TERMFILTER_TITLE_MAX - 1 + 1);
        NB_CHECK_EQ_INT(S.buf[S.n - 2], 'a');
    }
    /* colours: set, query, reset */
    NB_CHECK_STR(run("\x1b]11;?\x07\x1b]4;1;rgb:ff/00/00\x1b\\\x1b]104\x07\x1b]112\x07"),
                 "\x1b]11;?\x07\x1b]4;1;rgb:ff/00/00\x1b\\\x1b]104\x07\x1b]112\x07");
    NB_CHECK_EQ_INT(total(), 0);
}

static void test_A20_features_and_reports_dropped(void)
{
    /* iTerm2 (file transfer, open URL), kitty file transfer, notifications, cwd, log file */
    NB_CHECK_STR(run("\x1b]1337;File=inline=1:QUFB\x07\x1b]1337;OpenURL=aHR0cA==\x07"
                     "\x1b]5113;ac=send\x1b\\\x1b]9;hi\x07\x1b]777;notify;a;b\x07"
                     "\x1b]7;file:///etc\x07\x1b]46;/tmp/log\x07\x1b]50;?\x07."),
                 ".");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_FEATURE), 8);
    /* hyperlinks: web links pass (they open only on a click), others not */
    NB_CHECK_STR(run("\x1b]8;;https://example.com/\x1b\\x\x1b]8;;\x1b\\"),
                 "\x1b]8;;https://example.com/\x1b\\x\x1b]8;;\x1b\\");
    NB_CHECK_STR(run("\x1b]8;id=1;HTTP://e\x07"), "\x1b]8;id=1;HTTP://e\x07");
    NB_CHECK_STR(run("\x1b]8;;file:///etc/passwd\x07x\x1b]8;;ssh://h\x07"), "x");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_FEATURE), 2);
    /* reports that type guest-chosen text, screen reads, window ops, printer */
    NB_CHECK_STR(run("\x1b[21t\x1b[20t\x1b[3;0;0t\x1b[8;100;100t\x1b[5i\x1b[?5i"
                     "\x1b[1;1;1;1;10;10*y\x1b[1;1;5;5#|!"),
                 "!");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_REPORT), 8);
    /* leaving UTF-8 or entering VT52 mode */
    NB_CHECK_STR(run("\x1b%@\x1b[?2l\x1b[?1;2l-"), "-");
    NB_CHECK_EQ_INT(blocked(NB_TERMFILTER_MODE), 3);
}

static void test_A20_notice(void)
{
    char buf[256];
    nb_termfilter_stats_t st = {0};
    NB_CHECK_EQ_INT(nb_termfilter_notice(&st, buf, sizeof buf), 0);
    NB_CHECK_STR(buf, "");
    run("\x1b]52;c;QQ==\x07\x1b]52;c;QQ==\x07");
    nb_termfilter_stats(&F, &st);
    NB_CHECK(nb_termfilter_notice(&st, buf, sizeof buf) > 0);
    NB_CHECK_STR(buf,
                 "nilbox: blocked 2 terminal escape sequences from the guest (clipboard write)\n");
    run("\x1bP+q544e\x1b\\");
    nb_termfilter_stats(&F, &st); /* sums */
    nb_termfilter_notice(&st, buf, sizeof buf);
    NB_CHECK_STR(buf, "nilbox: blocked 3 terminal escape sequences from the guest (clipboard "
                      "write, device control or passthrough string)\n");
    /* truncation stays NUL-terminated */
    NB_CHECK_EQ_INT(nb_termfilter_notice(&st, buf, 10), 9);
    NB_CHECK_EQ_INT(strlen(buf), 9);
}

int main(void)
{
    NB_RUN(test_A20_osc52_bel_and_st);
    NB_RUN(test_A20_split_every_boundary);
    NB_RUN(test_A20_tmux_passthrough);
    NB_RUN(test_A20_c1_forms);
    NB_RUN(test_A20_long_osc_bounded);
    NB_RUN(test_A20_text_utf8_colours_pass);
    NB_RUN(test_A20_titles_pass);
    NB_RUN(test_A20_features_and_reports_dropped);
    NB_RUN(test_A20_notice);
    NB_TEST_MAIN_END();
}
