#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/alloc.h"
#include "switchboard/devcert.h"
#include "switchboard/error.h"

typedef struct fixture {
    char base[64];     /* mkdtemp directory, removed in teardown */
    char data[128];    /* base/data: does not exist before the first call */
    char path[4][192]; /* data/tls/{ca.pem,ca.key,server.pem,server.key} */
    char scratch[256];
} fixture;

enum { CA_PEM, CA_KEY, SRV_PEM, SRV_KEY };
static const char *const names[4] = {"ca.pem", "ca.key", "server.pem", "server.key"};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->base, sizeof f->base, "/tmp/sb-devcert-XXXXXX");
    if (!mkdtemp(f->base)) {
        free(f);
        return -1;
    }
    snprintf(f->data, sizeof f->data, "%s/data", f->base);
    for (int i = 0; i < 4; i++)
        snprintf(f->path[i], sizeof f->path[i], "%s/tls/%s", f->data, names[i]);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    chmod(f->base, 0700);
    chmod(f->data, 0700);
    nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void ensure_ok(const char *dir)
{
    char err[512] = "untouched";
    int rc = sb_devcert_ensure(dir, err, sizeof err);
    if (rc != 0)
        fail_msg("sb_devcert_ensure(%s) = %d: %s", dir, rc, err);
    assert_string_equal(err, "");
}

typedef struct blob {
    unsigned char *p;
    size_t len;
} blob;

static blob slurp(const char *path)
{
    blob b = {NULL, 0};
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long n = ftell(fp);
    assert_true(n > 0);
    rewind(fp);
    b.p = malloc((size_t)n);
    assert_non_null(b.p);
    b.len = fread(b.p, 1, (size_t)n, fp);
    assert_int_equal(b.len, (size_t)n);
    fclose(fp);
    return b;
}

static int blob_eq(blob a, blob b)
{
    return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

static void spit(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static X509 *read_cert(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    EVP_PKEY *k = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(k);
    return k;
}

static void write_cert(const char *path, X509 *x)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_X509(fp, x), 1);
    assert_int_equal(fclose(fp), 0);
}

static void write_key(const char *path, EVP_PKEY *k, const EVP_CIPHER *enc, const char *pass)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PKCS8PrivateKey(fp, k, enc, NULL, 0, NULL, (void *)pass), 1);
    assert_int_equal(fclose(fp), 0);
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* Verifies srv against ca the way a strict TLS client would; returns the X509_V_* code. */
static int verify_with(X509 *ca, X509 *srv)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    assert_non_null(store);
    assert_non_null(ctx);
    assert_int_equal(X509_STORE_add_cert(store, ca), 1);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, srv, NULL), 1);
    assert_int_equal(X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER), 1);
    X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_X509_STRICT);
    int ok = X509_verify_cert(ctx);
    int e = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    ERR_clear_error();
    return e;
}

static void assert_verifies(X509 *ca, X509 *srv)
{
    int e = verify_with(ca, srv);
    if (e != X509_V_OK)
        fail_msg("verification failed: %s", X509_verify_cert_error_string(e));
}

static void assert_files_verify(const fixture *f)
{
    X509 *ca = read_cert(f->path[CA_PEM]);
    X509 *srv = read_cert(f->path[SRV_PEM]);
    EVP_PKEY *ca_key = read_key(f->path[CA_KEY]);
    EVP_PKEY *srv_key = read_key(f->path[SRV_KEY]);
    assert_verifies(ca, srv);
    assert_int_equal(X509_check_private_key(ca, ca_key), 1);
    assert_int_equal(X509_check_private_key(srv, srv_key), 1);
    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(ca_key);
    X509_free(srv);
    X509_free(ca);
}

static int validity_days(X509 *x)
{
    int days = -1, secs = -1;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)),
                     1);
    assert_int_equal(secs, 0);
    return days;
}

static void assert_p256(EVP_PKEY *k)
{
    char group[64];
    size_t len = 0;
    assert_true(EVP_PKEY_is_a(k, "EC"));
    assert_int_equal(EVP_PKEY_get_group_name(k, group, sizeof group, &len), 1);
    assert_string_equal(group, "prime256v1");
}

static int serial_bits(X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    assert_non_null(bn);
    int bits = BN_num_bits(bn);
    BN_free(bn);
    return bits;
}

/* Signs a minimal server certificate; issuer == NULL makes it self-signed. */
static X509 *sign_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, long days)
{
    X509 *x = X509_new();
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 42), 1);
    X509_NAME *name = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"localhost", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, NULL));
    assert_int_equal(X509_set_pubkey(x, key), 1);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    static const struct {
        int nid;
        const char *value;
    } exts[] = {
        {NID_basic_constraints, "critical,CA:FALSE"}, {NID_ext_key_usage, "serverAuth"},
        {NID_subject_alt_name, "DNS:localhost"},      {NID_subject_key_identifier, "hash"},
        {NID_authority_key_identifier, "keyid"},
    };
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        if (!issuer && exts[i].nid == NID_authority_key_identifier)
            continue;
        X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &ctx, exts[i].nid, exts[i].value);
        assert_non_null(e);
        assert_int_equal(X509_add_ext(x, e, -1), 1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void test_fresh(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);

    snprintf(f->scratch, sizeof f->scratch, "%s/tls", f->data);
    assert_int_equal(file_mode(f->data), 0700);
    assert_int_equal(file_mode(f->scratch), 0700);
    assert_int_equal(file_mode(f->path[CA_KEY]), 0600);
    assert_int_equal(file_mode(f->path[SRV_KEY]), 0600);
    assert_int_equal(file_mode(f->path[CA_PEM]), 0644);
    assert_int_equal(file_mode(f->path[SRV_PEM]), 0644);

    /* No temp files left behind. */
    DIR *dir = opendir(f->scratch);
    assert_non_null(dir);
    int entries = 0;
    for (struct dirent *de = readdir(dir); de; de = readdir(dir))
        entries += de->d_name[0] != '.';
    closedir(dir);
    assert_int_equal(entries, 4);

    blob k = slurp(f->path[SRV_KEY]);
    static const char pkcs8[] = "-----BEGIN PRIVATE KEY-----\n";
    assert_true(k.len > sizeof pkcs8 && memcmp(k.p, pkcs8, sizeof pkcs8 - 1) == 0);
    free(k.p);

    X509 *ca = read_cert(f->path[CA_PEM]);
    X509 *srv = read_cert(f->path[SRV_PEM]);
    EVP_PKEY *ca_key = read_key(f->path[CA_KEY]);
    EVP_PKEY *srv_key = read_key(f->path[SRV_KEY]);

    /* CA */
    char cn[128];
    assert_true(
        X509_NAME_get_text_by_NID(X509_get_subject_name(ca), NID_commonName, cn, sizeof cn) > 0);
    assert_string_equal(cn, "Switchboard Development CA");
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(ca), X509_get_issuer_name(ca)), 0);
    assert_int_equal(X509_check_ca(ca), 1);
    assert_true(X509_get_key_usage(ca) & KU_KEY_CERT_SIGN);
    assert_true(X509_get_key_usage(ca) & KU_CRL_SIGN);
    assert_int_equal(X509_get_version(ca), X509_VERSION_3);
    assert_int_equal(validity_days(ca), 3650);
    assert_int_equal(X509_check_private_key(ca, ca_key), 1);
    assert_p256(ca_key);
    assert_int_equal(serial_bits(ca), 159);
    const ASN1_OCTET_STRING *ca_skid = X509_get0_subject_key_id(ca);
    assert_non_null(ca_skid);
    assert_non_null(X509_get0_authority_key_id(ca));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(ca), ca_skid), 0);

    /* Server */
    assert_verifies(ca, srv);
    assert_int_equal(X509_check_host(srv, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(srv, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "::1", 0), 1);
    assert_int_equal(X509_check_host(srv, "example.com", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ip_asc(srv, "10.0.0.1", 0), 0);
    assert_true(X509_get_extension_flags(srv) & EXFLAG_XKUSAGE);
    assert_true(X509_get_extended_key_usage(srv) & XKU_SSL_SERVER);
    assert_true(X509_get_key_usage(srv) & KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_check_ca(srv), 0);
    assert_int_equal(X509_check_issued(ca, srv), X509_V_OK);
    assert_int_equal(validity_days(srv), 825);
    assert_int_equal(serial_bits(srv), 159);
    assert_int_equal(X509_check_private_key(srv, srv_key), 1);
    assert_p256(srv_key);
    assert_non_null(X509_get0_subject_key_id(srv));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(srv), ca_skid), 0);

    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(ca_key);
    X509_free(srv);
    X509_free(ca);
}

static void snapshot(const fixture *f, blob out[4])
{
    for (int i = 0; i < 4; i++)
        out[i] = slurp(f->path[i]);
}

static void release(blob b[4])
{
    for (int i = 0; i < 4; i++)
        free(b[i].p);
}

static void test_reuse(void **state)
{
    fixture *f = *state;
    blob a[4], b[4];
    ensure_ok(f->data);
    snapshot(f, a);
    ensure_ok(f->data);
    snapshot(f, b);
    for (int i = 0; i < 4; i++)
        if (!blob_eq(a[i], b[i]))
            fail_msg("%s changed on reuse", names[i]);
    release(a);
    release(b);
}

static void test_missing_server_pem(void **state)
{
    fixture *f = *state;
    blob a[4], b[4];
    ensure_ok(f->data);
    snapshot(f, a);
    assert_int_equal(unlink(f->path[SRV_PEM]), 0);
    ensure_ok(f->data);
    snapshot(f, b);
    assert_true(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_true(blob_eq(a[CA_KEY], b[CA_KEY]));
    assert_false(blob_eq(a[SRV_KEY], b[SRV_KEY])); /* re-issued with a fresh key */
    assert_files_verify(f);
    release(a);
    release(b);
}

static void test_missing_server_key(void **state)
{
    fixture *f = *state;
    blob a[4], b[4];
    ensure_ok(f->data);
    snapshot(f, a);
    assert_int_equal(unlink(f->path[SRV_KEY]), 0);
    ensure_ok(f->data);
    snapshot(f, b);
    assert_true(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_true(blob_eq(a[CA_KEY], b[CA_KEY]));
    assert_false(blob_eq(a[SRV_PEM], b[SRV_PEM]));
    assert_files_verify(f);
    release(a);
    release(b);
}

static void test_corrupt_ca(void **state)
{
    fixture *f = *state;
    blob a[4], b[4];
    ensure_ok(f->data);
    snapshot(f, a);
    X509 *old_srv = read_cert(f->path[SRV_PEM]);
    static const char junk[] = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                               "-----END CERTIFICATE-----\n";
    spit(f->path[CA_PEM], junk, sizeof junk - 1);
    ensure_ok(f->data);
    snapshot(f, b);
    for (int i = 0; i < 4; i++)
        if (blob_eq(a[i], b[i]))
            fail_msg("%s was not regenerated", names[i]);
    assert_files_verify(f);
    X509 *ca = read_cert(f->path[CA_PEM]);
    assert_int_not_equal(verify_with(ca, old_srv), X509_V_OK);
    X509_free(ca);
    X509_free(old_srv);
    release(a);
    release(b);
}

static void test_ca_key_mismatch(void **state)
{
    fixture *f = *state;
    blob a[4], b[4];
    ensure_ok(f->data);
    snapshot(f, a);
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(other);
    write_key(f->path[CA_KEY], other, NULL, NULL);
    EVP_PKEY_free(other);
    ensure_ok(f->data);
    snapshot(f, b);
    assert_false(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_false(blob_eq(a[SRV_PEM], b[SRV_PEM]));
    assert_files_verify(f);
    release(a);
    release(b);
}

/* Replaces server.pem with a cert for the existing server key, signed by the CA. */
static void plant_server_cert(const fixture *f, long days)
{
    X509 *ca = read_cert(f->path[CA_PEM]);
    EVP_PKEY *ca_key = read_key(f->path[CA_KEY]);
    EVP_PKEY *key = read_key(f->path[SRV_KEY]);
    X509 *x = sign_cert(key, ca, ca_key, days);
    assert_verifies(ca, x);
    write_cert(f->path[SRV_PEM], x);
    X509_free(x);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
    X509_free(ca);
}

static void test_server_near_expiry(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);

    plant_server_cert(f, 60); /* outside the 30-day window: kept */
    blob a[4], b[4];
    snapshot(f, a);
    ensure_ok(f->data);
    snapshot(f, b);
    for (int i = 0; i < 4; i++)
        assert_true(blob_eq(a[i], b[i]));
    release(b);

    plant_server_cert(f, 10);
    release(a);
    snapshot(f, a);
    ensure_ok(f->data);
    snapshot(f, b);
    assert_true(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_true(blob_eq(a[CA_KEY], b[CA_KEY]));
    assert_false(blob_eq(a[SRV_PEM], b[SRV_PEM]));
    assert_false(blob_eq(a[SRV_KEY], b[SRV_KEY]));
    assert_files_verify(f);
    X509 *srv = read_cert(f->path[SRV_PEM]);
    assert_int_equal(validity_days(srv), 825);
    X509_free(srv);
    release(a);
    release(b);
}

static void test_server_from_other_ca(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);
    blob a[4], b[4];
    snapshot(f, a);

    /* A valid pair from another development CA with the very same CA name. */
    snprintf(f->scratch, sizeof f->scratch, "%s/other", f->base);
    ensure_ok(f->scratch);
    char p[320];
    snprintf(p, sizeof p, "%s/tls/server.pem", f->scratch);
    blob pem = slurp(p);
    snprintf(p, sizeof p, "%s/tls/server.key", f->scratch);
    blob key = slurp(p);
    spit(f->path[SRV_PEM], pem.p, pem.len);
    spit(f->path[SRV_KEY], key.p, key.len);

    ensure_ok(f->data);
    snapshot(f, b);
    assert_true(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_true(blob_eq(a[CA_KEY], b[CA_KEY]));
    assert_false(blob_eq(pem, b[SRV_PEM]));
    assert_false(blob_eq(key, b[SRV_KEY]));
    assert_files_verify(f);
    free(pem.p);
    free(key.p);
    release(a);
    release(b);
}

static void test_server_self_signed(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);
    EVP_PKEY *key = read_key(f->path[SRV_KEY]);
    X509 *x = sign_cert(key, NULL, NULL, 365);
    write_cert(f->path[SRV_PEM], x);
    X509_free(x);
    EVP_PKEY_free(key);
    ensure_ok(f->data);
    assert_files_verify(f);
}

static void test_server_key_mismatch(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);
    blob a[4], b[4];
    snapshot(f, a);
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(other);
    write_key(f->path[SRV_KEY], other, NULL, NULL);
    EVP_PKEY_free(other);
    ensure_ok(f->data);
    snapshot(f, b);
    assert_true(blob_eq(a[CA_PEM], b[CA_PEM]));
    assert_true(blob_eq(a[CA_KEY], b[CA_KEY]));
    assert_false(blob_eq(a[SRV_PEM], b[SRV_PEM]));
    assert_files_verify(f);
    release(a);
    release(b);
}

/* An encrypted key is unusable (no prompt on the terminal) and gets replaced. */
static void test_encrypted_server_key(void **state)
{
    fixture *f = *state;
    ensure_ok(f->data);
    EVP_PKEY *key = read_key(f->path[SRV_KEY]);
    write_key(f->path[SRV_KEY], key, EVP_aes_256_cbc(), "secret");
    EVP_PKEY_free(key);
    ensure_ok(f->data);
    assert_files_verify(f);
}

static void test_unwritable(void **state)
{
    fixture *f = *state;
    char err[512];

    /* DIR below a regular file. */
    snprintf(f->scratch, sizeof f->scratch, "%s/file", f->base);
    spit(f->scratch, "x", 1);
    char dir[320];
    snprintf(dir, sizeof dir, "%s/data", f->scratch);
    err[0] = '\0';
    assert_int_equal(sb_devcert_ensure(dir, err, sizeof err), -ENOTDIR);
    assert_non_null(strstr(err, dir));
    assert_non_null(strstr(err, "cannot create directory"));

    /* DIR is a regular file. */
    err[0] = '\0';
    assert_int_equal(sb_devcert_ensure(f->scratch, err, sizeof err), -ENOTDIR);
    assert_non_null(strstr(err, "not a directory"));

    /* Truncated message still NUL-terminated. */
    char tiny[8];
    assert_true(sb_devcert_ensure(dir, tiny, sizeof tiny) < 0);
    assert_int_equal(strlen(tiny), sizeof tiny - 1);

    /* Permission bits do not stop root. */
    if (geteuid() == 0)
        return;
    assert_int_equal(mkdir(f->data, 0500), 0);
    err[0] = '\0';
    assert_int_equal(sb_devcert_ensure(f->data, err, sizeof err), -EACCES);
    assert_non_null(strstr(err, f->data));

    /* Everything present and valid but read-only: reused without writing. */
    assert_int_equal(chmod(f->data, 0700), 0);
    ensure_ok(f->data);
    snprintf(f->scratch, sizeof f->scratch, "%s/tls", f->data);
    assert_int_equal(chmod(f->scratch, 0500), 0);
    ensure_ok(f->data);
    assert_int_equal(unlink(f->path[SRV_PEM]), -1); /* dir is read-only */
    assert_int_equal(chmod(f->scratch, 0700), 0);
    assert_int_equal(unlink(f->path[SRV_PEM]), 0);
    assert_int_equal(chmod(f->scratch, 0500), 0);
    err[0] = '\0';
    assert_true(sb_devcert_ensure(f->data, err, sizeof err) < 0);
    assert_non_null(strstr(err, "server."));
    assert_int_equal(chmod(f->scratch, 0700), 0);
}

static void test_invalid_args(void **state)
{
    (void)state;
    char err[128];
    assert_int_equal(sb_devcert_ensure(NULL, err, sizeof err), SB_EINVAL);
    assert_true(strlen(err) > 0);
    assert_int_equal(sb_devcert_ensure("", NULL, 0), SB_EINVAL);
}

static int fail_at;
static int alloc_count;

static void *failing_malloc(size_t size, void *ud)
{
    (void)ud;
    if (alloc_count++ == fail_at)
        return NULL;
    return malloc(size);
}

static void *failing_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    if (alloc_count++ == fail_at)
        return NULL;
    return realloc(ptr, size);
}

static void plain_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

/* Failing each sb_malloc in turn, on fresh and on reuse runs, yields SB_ENOMEM, no leaks. */
static void test_alloc_failure(void **state)
{
    fixture *f = *state;
    static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};
    char err[512];
    int saw_enomem = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (fail_at = 0;; fail_at++) {
            alloc_count = 0;
            sb_alloc_set(&failing);
            int rc = sb_devcert_ensure(f->data, err, sizeof err);
            sb_alloc_set(NULL);
            if (rc == 0)
                break;
            assert_int_equal(rc, SB_ENOMEM);
            assert_true(strlen(err) > 0);
            saw_enomem++;
            assert_true(fail_at < 100);
        }
        assert_files_verify(f);
        if (pass == 0)
            assert_int_equal(unlink(f->path[SRV_PEM]), 0);
    }
    assert_true(saw_enomem > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_server_pem, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_server_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_key_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_near_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_from_other_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_self_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_key_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encrypted_server_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failure, setup, teardown),
        cmocka_unit_test(test_invalid_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
